"""Small programs that notebooks 06 and 07 launch with torchrun (``python -m ddp_demos.<name>``)."""
