"""The server registers no components and implements no hooks: it adds the ``apt-kernel serve`` command,
declared in its manifest and imported only when used. This module is its entry point, so the kernel lists
and checks it."""
