"""The shipped configs, installed as the package vae.configs so that `--config NAME` finds them anywhere."""
