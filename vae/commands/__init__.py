"""The commands: vae-train, vae-evaluate and vae-sweep (also `python -m vae NAME`, and NAME.py in a checkout)."""
