"""chainsuite image chains on disk: qemu-img wrapper, specs, crafted images."""
