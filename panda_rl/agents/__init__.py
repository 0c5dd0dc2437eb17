"""Learning algorithms: advantage estimators, losses (pure functions) and the SGD loop."""
