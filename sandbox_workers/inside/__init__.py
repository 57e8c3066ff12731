"""Code that runs inside the sandbox (stdlib only): the supervisor, its boxes and the codec between them."""
