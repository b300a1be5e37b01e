"""What training is made of: the state and steps, the one setup, the one loop, stages,
trainable/frozen parameters, cached backbone features and the collapse guard."""
