"""The training core: the trainer, the controller (the loop) and the parts it calls."""
