"""The marketplace registers no components and implements no hooks: everything it adds is commands
(``apt-kernel marketplace ...``, ``apt-kernel plugins search | install | ...``), declared in its manifest
and imported only when used. This module is its entry point, so the kernel lists and checks it."""
