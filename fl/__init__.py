"""Federated training: Flower apps, MONAI networks, the algorithm registry."""

#: where, under a training's Flower output folder, the hospitals of a personalised algorithm keep
#: the models they deploy (written by fl.client, read by eval.outcome and the training cache)
CLIENT_MODELS_DIR = "clients"
