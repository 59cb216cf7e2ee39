"""Implementations under test, one module per kind: reference, qemu-img, python, cmd."""
