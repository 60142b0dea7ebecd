"""Loading a run and predicting: the Predictor, resumable file prediction, Ray Data batch prediction."""
