"""A variational autoencoder for MNIST-class data: config, data, model, loss, training, checkpoints."""
