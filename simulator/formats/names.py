"""libvirt's format names, apart from the detection tables so that the prober loads cheaply."""

from __future__ import annotations

LIBVIRT_FORMAT_NAMES = (
    "none",
    "raw",
    "dir",
    "bochs",
    "cloop",
    "dmg",
    "iso",
    "vpc",
    "vdi",
    "fat",
    "vhd",
    "ploop",
    "cow",
    "qcow",
    "qcow2",
    "qed",
    "vmdk",
)
"""virStorageFileFormat's names in enum order (virStorageFileFormatTypeFromString)."""

LIBVIRT_BACKING_FORMATS = frozenset({"cow", "qcow", "qcow2", "qed", "vmdk"})
"""Formats at or past VIR_STORAGE_FILE_BACKING: the ones libvirt follows backing chains of."""
