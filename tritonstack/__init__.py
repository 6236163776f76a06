"""tritonstack: export a PyTorch model, serve it with Triton, front it, deploy it, benchmark it."""

__version__ = "0.1.0"
