"""The chain walk: libvirt's virStorageSourceGetMetadata (and qemu-img's), ruled by a profile.

One image at a time: decide its format, read as much of its header as the
rules need, decode it, then turn its backing name into the next image. Each
rule that changed over time is asked of the profile.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from simulator import backing as backing_names
from simulator.formats import qcow2
from simulator.formats.header import (
    Header,
    HeaderInfo,
    HeaderRejected,
    NeedMoreBytes,
    decode_c_name,
)
from simulator.formats.names import LIBVIRT_FORMAT_NAMES
from simulator.model import Chain, ChainError, ErrorCode, Layer, LayerType
from simulator.profiles import (
    DetectionRule,
    HeaderDecoder,
    LoopRule,
    NetworkBackingRule,
    Profile,
    RelativeNameRule,
    TopFormatRule,
    UnknownFormatNameRule,
    UnrecordedBackingRule,
)
from simulator.storage import FileKind, ImageFile, LocalStorage, Storage
from simulator.values import evolve, quick_init

FIRST_READ = 1024
"""Bytes read of a header at first; well-formed headers need no more."""
QEMU_HEADER_LIMIT = 2 * 1024 * 1024
"""How far qemu's decoders may read: the largest qcow2 cluster."""
QEMU_FORMATS = frozenset(
    {"bochs", "cloop", "dmg", "luks", "parallels", "qcow", "qcow2", "qed", "raw", "vdi"}
    | {"vhdx", "vmdk", "vpc"}
)
QEMU_FILE_PROTOCOLS = frozenset({"file", "host_device", "host_cdrom"})
QEMU_DRIVERS = QEMU_FORMATS | QEMU_FILE_PROTOCOLS
"""What qemu accepts as a layer's driver: a format, or a file protocol alone."""
QEMU_NETWORK_PROTOCOLS = frozenset(
    {"nbd", "nbd+tcp", "nbd+unix", "http", "https", "ftp", "ftps", "ssh", "iscsi", "iser"}
    | {"rbd", "gluster", "gluster+tcp", "gluster+unix", "gluster+rdma", "nfs", "nvme"}
)
PROBE = None
"""A pending format of None means: probe it (libvirt's AUTO)."""

_Decoder = Callable[[Header], HeaderInfo]


class _End(Enum):
    """How a walk ends: at libvirt's explicit terminator, or where the end is unknown."""

    TERMINATED = "terminated"
    UNKNOWN = "unknown"


@quick_init
@dataclass(frozen=True)
class _Pending:
    """The next image to visit, as its parent named it."""

    filename: str
    format: str | None
    type: LayerType = LayerType.FILE
    relative_path: str | None = None
    probe_safe: bool = False
    protocol: str | None = None
    hosts: tuple[backing_names.NetworkHost, ...] = ()


@dataclass
class ProbeStats:
    """What probing cost: images opened and header bytes read."""

    images_opened: int = 0
    header_bytes_read: int = 0
    opened_paths: list[str] = field(default_factory=list)


class _RefusedProbe(Exception):
    """libvirt's -2: a probed image turned out to have a backing of its own."""


class Prober:
    """Determines chains under one profile, through one storage."""

    def __init__(self, profile: Profile, storage: Storage | None = None) -> None:
        self.profile = profile
        self.storage = storage if storage is not None else LocalStorage()
        self.stats = ProbeStats()

    def probe(self, path: str, format: str | None = None) -> Chain:
        """The chain of the image at ``path`` whose format is ``format`` (None: unspecified)."""
        if self.profile.decoder is HeaderDecoder.QEMU:
            return _QemuWalk(self).run(path, format)
        return _LibvirtWalk(self).run(path, format)

    def read_header(self, image: ImageFile, bound: int | None) -> _HeaderReader:
        return _HeaderReader(self, image, bound)


class _HeaderReader:
    """Reads a header lazily: a first small read, more only when a decoder asks."""

    def __init__(self, prober: Prober, image: ImageFile, bound: int | None) -> None:
        self._prober = prober
        self._image = image
        self.length = image.size if bound is None else min(image.size, bound)
        self._data = b""

    def decode(self, decoder: _Decoder) -> HeaderInfo:
        wanted = min(FIRST_READ, self.length)
        while True:
            self._extend(wanted)
            try:
                return decoder(Header(self._data, self.length))
            except NeedMoreBytes as more:
                if more.end <= len(self._data):
                    raise
                wanted = min(max(more.end, 2 * len(self._data)), self.length)

    def first(self, size: int) -> bytes:
        self._extend(min(size, self.length))
        return self._data[:size]

    def header(self, size: int) -> Header:
        self._extend(min(size, self.length))
        return Header(self._data, self.length)

    def _extend(self, end: int) -> None:
        if end <= len(self._data):
            return
        chunk = self._image.read(len(self._data), end - len(self._data))
        self._prober.stats.header_bytes_read += len(chunk)
        self._data += chunk
        if len(self._data) < end:
            self.length = len(self._data)


def _error_for_os(
    error: OSError, pending: _Pending, parent: str | None, accessible: bool = False
) -> ChainError:
    """libvirt's wording: virStorageSourceReportBrokenChain when the access check fails,
    a read error when the file is there but cannot be read; the code follows errno."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOENT:
        code = ErrorCode.NOT_FOUND if parent is None else ErrorCode.BACKING_MISSING
    elif error.errno in (errno.EACCES, errno.EPERM):
        code = ErrorCode.PERMISSION_DENIED
    else:
        code = ErrorCode.READ_FAILED
    if accessible:
        message = f"cannot read header '{pending.filename}': {reason}"
    elif parent is None:
        message = f"Cannot access storage file '{pending.filename}': {reason}"
    else:
        message = (
            f"Cannot access backing file '{pending.filename}' of storage file '{parent}': {reason}"
        )
    return ChainError(code, message, pending.filename)


class _LibvirtWalk:
    """virStorageSourceGetMetadataRecurse, iteratively, for the libvirt profiles."""

    def __init__(self, prober: Prober) -> None:
        self.prober = prober
        self.profile = prober.profile
        self.storage = prober.storage
        self.layers: list[Layer] = []
        self.visited: set[str] = set()

    def run(self, path: str, format: str | None) -> Chain:
        kind = self.storage.kind(path)
        top_format = self._top_format(format, kind)
        layer_type = LayerType.DIR if kind is FileKind.DIR else _file_type(kind)
        pending = _Pending(path, top_format, layer_type)
        top = path
        depth = 1
        while True:
            max_depth = self.profile.max_depth
            if max_depth is not None and depth > max_depth:
                raise ChainError(
                    ErrorCode.TOO_DEEP,
                    f"backing store for {pending.filename} is self-referential "
                    "or too deeply nested",
                    pending.filename,
                )
            try:
                next_pending = self._visit(pending, depth, top)
            except _RefusedProbe:
                parent = self.layers[-1]
                raise ChainError(
                    ErrorCode.BACKING_FORMAT_UNSPECIFIED,
                    f"format of backing image '{parent.backing_raw}' of image "
                    f"'{parent.filename}' was not specified in the image metadata "
                    "(See https://libvirt.org/kbase/backing_chains.html for troubleshooting)",
                    parent.filename,
                ) from None
            if isinstance(next_pending, _End):
                terminated = next_pending is _End.TERMINATED
                return Chain(tuple(self.layers), terminated, self.prober.stats.header_bytes_read)
            pending = next_pending
            depth += 1

    def _top_format(self, format: str | None, kind: FileKind | None) -> str | None:
        """virStorageSourceGetMetadata: a format <= NONE (unspecified or 'none') is decided here."""
        if format not in (None, "none"):
            return format
        if self.profile.top_format is TopFormatRule.PROBE_IF_ALLOWED:
            return PROBE if self.profile.allow_format_probing else "raw"
        return "dir" if kind is FileKind.DIR else "raw"

    def _visit(self, pending: _Pending, depth: int, top: str) -> _Pending | _End:
        """Visits one image; returns the next one to visit or how the chain ends."""
        parent = None if depth == 1 else top
        if self.profile.loop_detection is LoopRule.VISITED_PATHS:
            if pending.filename in self.visited:
                raise ChainError(
                    ErrorCode.BACKING_LOOP,
                    f"backing store for {pending.filename} is self-referential",
                    pending.filename,
                )
            self.visited.add(pending.filename)
        if pending.type in (LayerType.NETWORK, LayerType.DIR):
            if pending.format is PROBE:
                raise _RefusedProbe
            self._append(pending, depth, pending.format or "raw", HeaderInfo(format="raw"))
            return _End.UNKNOWN
        try:
            image = self.storage.open(pending.filename)
        except OSError as error:
            accessible = self.storage.kind(pending.filename) is not None
            raise _error_for_os(error, pending, parent, accessible) from None
        self.prober.stats.images_opened += 1
        self.prober.stats.opened_paths.append(pending.filename)
        try:
            reader = self.prober.read_header(image, self.profile.header_bound)
            format = pending.format
            if format is PROBE:
                format = self._detect(reader, pending.filename)
            info = self._decode(reader, format, pending.filename)
        except OSError as error:
            raise _error_for_os(error, pending, parent, accessible=True) from None
        except HeaderRejected as rejected:
            raise ChainError(
                ErrorCode.HEADER_INVALID, f"cannot read header '{pending.filename}': {rejected}"
            ) from None
        finally:
            image.close()
        refuses = self.profile.unrecorded_backing is UnrecordedBackingRule.PROBE_IF_NO_BACKING
        if pending.format is PROBE and info.backing_name is not None and refuses:
            raise _RefusedProbe
        layer_format = format
        if depth > 1 and format == "iso" and self.profile.detected_iso_as_raw:
            layer_format = "raw"
        layer = self._append(pending, depth, layer_format, info)
        if info.backing_name is None:
            return _End.TERMINATED
        return self._next(layer, info)

    def _detect(self, reader: _HeaderReader, filename: str) -> str:
        from simulator.formats.detect import detect_libvirt, detect_libvirt_2012

        if self.profile.detection is DetectionRule.LIBVIRT_2012:
            return detect_libvirt_2012(reader.header(FIRST_READ), filename)
        header = reader.header(FIRST_READ)
        try:
            return detect_libvirt(header)
        except NeedMoreBytes as more:
            return detect_libvirt(reader.header(more.end))

    def _decode(self, reader: _HeaderReader, format: str, filename: str) -> HeaderInfo:
        rules = self.profile.read_rules
        if format not in LIBVIRT_FORMAT_NAMES or format == "none":
            raise ChainError(
                ErrorCode.UNKNOWN_FORMAT,
                f"unknown storage file meta->format {format!r} for '{filename}'",
                filename,
            )
        if format == "qcow2":
            return reader.decode(lambda header: qcow2.decode_libvirt(header, rules))
        # The other formats' modules load only when a chain holds them: the CLI starts faster.
        from simulator.formats import cow, qcow, qed, vmdk
        from simulator.formats.detect import libvirt_capacity

        if format == "qcow":
            return reader.decode(lambda header: qcow.decode_libvirt(header, rules))
        if format == "qed":
            return reader.decode(qed.decode_libvirt)
        if format == "vmdk":
            return reader.decode(lambda header: vmdk.decode_libvirt(header, rules))
        if format == "cow":
            return reader.decode(cow.decode_libvirt)
        if format in ("vpc", "vdi", "ploop"):
            return reader.decode(lambda header: _plain(format, libvirt_capacity(format, header)))
        return HeaderInfo(format=format)

    def _append(self, pending: _Pending, depth: int, format: str, info: HeaderInfo) -> Layer:
        layer = Layer(
            filename=pending.filename,
            format=format,
            type=pending.type,
            virtual_size=info.virtual_size,
            backing_raw=decode_c_name(info.backing_name) if info.backing_name else None,
            backing_format_raw=info.backing_format if info.backing_name else None,
            relative_path=pending.relative_path,
            index=depth - 1,
            protocol=pending.protocol,
            hosts=pending.hosts,
            data_file=decode_c_name(info.data_file) if info.data_file else None,
            encrypted=info.encryption is not None,
        )
        self.layers.append(layer)
        return layer

    def _next(self, layer: Layer, info: HeaderInfo) -> _Pending | _End:
        """virStorageSourceNewFromBacking: the location, then the recorded format over it."""
        name = layer.backing_raw
        assert name is not None
        format = self._backing_format(info)
        if name.startswith("/"):  # an absolute file name, the common case: nothing to parse
            return self._next_file(layer, name, format, relative_name=None)
        if not self.profile.json_backing_names and not backing_names.is_file_name(name):
            self.layers[-1] = evolve(layer, backing_full=name)
            return _End.UNKNOWN
        try:
            location = backing_names.parse_backing(name)
        except backing_names.BackingNameError as error:
            raise ChainError(ErrorCode.BACKING_NAME_INVALID, str(error), layer.filename) from None
        if location.kind is backing_names.LocationKind.NETWORK:
            if location.inline_auth and self.profile.inline_credentials_stop:
                return _End.UNKNOWN
            if self.profile.network_backing is NetworkBackingRule.NOT_FOLLOWED:
                return _End.UNKNOWN
            network = _Pending(
                location.path or "",
                format,
                LayerType.NETWORK,
                protocol=location.protocol,
                hosts=location.hosts,
                probe_safe=info.backing_probe_safe,
            )
            self.layers[-1] = evolve(layer, backing_full=location.path)
            return network
        if location.kind is backing_names.LocationKind.DIR:
            self.layers[-1] = evolve(layer, backing_full=location.path)
            return _Pending(location.path or "", format, LayerType.DIR)
        path = location.path or name
        if not backing_names.is_relative(name):
            return self._next_file(layer, path, format, relative_name=None)
        path = backing_names.resolve_relative_libvirt(layer.filename, path)
        return self._next_file(layer, path, format, relative_name=name)

    def _next_file(
        self, layer: Layer, path: str, format: str | None, relative_name: str | None
    ) -> _Pending:
        """The backing file at ``path``; ``relative_name`` is how the header named it relatively."""
        if self.profile.relative_names is RelativeNameRule.CANONICAL:
            try:
                path = self.storage.canonical(path)
            except OSError as error:
                pending = _Pending(path, format)
                raise _error_for_os(error, pending, self.layers[0].filename) from None
        kind = self.storage.kind(path)
        self.layers[-1] = evolve(layer, backing_full=path)
        return _Pending(
            path,
            format,
            LayerType.DIR if kind is FileKind.DIR else _file_type(kind),
            relative_path=relative_name,
        )

    def _backing_format(self, info: HeaderInfo) -> str | None:
        """The format libvirt gives a backing image from what its overlay records."""
        recorded: str | None = None
        for name in info.backing_format_records:
            if name == "none" and self.profile.none_format_name_fails:
                recorded = "none"
                break
            if name in LIBVIRT_FORMAT_NAMES and name != "none":
                recorded = name
            elif self.profile.unknown_format_name is UnknownFormatNameRule.RAW:
                recorded = "raw"
            else:
                recorded = None
                if self.profile.none_format_name_fails:
                    break
        if recorded is not None:
            return recorded
        rule = self.profile.unrecorded_backing
        if info.backing_probe_safe and self.profile.qed_unrecorded_always_probed:
            return PROBE
        if rule is UnrecordedBackingRule.RAW_UNLESS_PROBING_ALLOWED:
            return PROBE if self.profile.allow_format_probing else "raw"
        if rule is UnrecordedBackingRule.RAW:
            return "raw"
        if rule is UnrecordedBackingRule.ERROR:
            raise _RefusedProbe
        return PROBE


def _plain(format: str, capacity: int | None) -> HeaderInfo:
    return HeaderInfo(format=format, virtual_size=capacity)


def _file_type(kind: FileKind | None) -> LayerType:
    return LayerType.BLOCK if kind is FileKind.BLOCK else LayerType.FILE


class _QemuWalk:
    """qemu-img info --backing-chain: open each name alone, loop check on the name strings."""

    def __init__(self, prober: Prober) -> None:
        self.prober = prober
        self.storage = prober.storage
        self.layers: list[Layer] = []

    def run(self, path: str, format: str | None) -> Chain:
        visited: set[str] = set()
        name: str | None = path
        index = 0
        while name is not None:
            if name in visited:
                raise ChainError(
                    ErrorCode.BACKING_LOOP,
                    f"Backing file '{name}' creates an infinite loop.",
                    name,
                )
            visited.add(name)
            layer, info = self._open(name, format, index == 0)
            self.layers.append(layer)
            name, format = self._next(layer, info)
            index += 1
        return Chain(tuple(self.layers), True, self.prober.stats.header_bytes_read)

    def _open(self, name: str, format: str | None, is_top: bool) -> tuple[Layer, HeaderInfo]:
        filename, format = self._file_of(name, format)
        if format is not None and format not in QEMU_DRIVERS:
            raise ChainError(ErrorCode.UNKNOWN_FORMAT, f"Unknown driver '{format}'", name)
        try:
            image = self.storage.open(filename)
        except OSError as error:
            if error.errno == errno.EISDIR:
                raise ChainError(
                    ErrorCode.READ_FAILED,
                    f"Could not open '{filename}': 'file' driver requires '{filename}' "
                    "to be a regular file",
                    name,
                ) from None
            code = _qemu_open_code(error, is_top)
            reason = error.strerror or str(error)
            raise ChainError(
                code, f"Could not open '{filename}': Could not open '{filename}': {reason}", name
            ) from None
        self.prober.stats.images_opened += 1
        self.prober.stats.opened_paths.append(filename)
        try:
            reader = self.prober.read_header(image, QEMU_HEADER_LIMIT)
            if format is None:
                from simulator.formats.detect import detect_qemu

                format = detect_qemu(reader.first(512), filename)
            info, extents = self._decode(reader, format, filename, image.size)
        except HeaderRejected as rejected:
            raise ChainError(
                ErrorCode.HEADER_INVALID, f"Could not open '{filename}': {rejected}", name
            ) from None
        except OSError as error:
            raise _error_for_os(error, _Pending(filename, format), None, accessible=True) from None
        finally:
            image.close()
        for extent in extents:
            self._check_extent(filename, extent, name)
        backing_raw = decode_c_name(info.backing_name) if info.backing_name else None
        full = None
        if backing_raw is not None:
            full = backing_names.resolve_relative_qemu(filename, backing_raw)
        layer = Layer(
            filename=filename,
            format=format,
            virtual_size=info.virtual_size,
            backing_raw=backing_raw,
            backing_full=full,
            backing_format_raw=info.backing_format if backing_raw else None,
            index=len(self.layers),
            data_file=decode_c_name(info.data_file) if info.data_file else None,
            encrypted=info.encryption is not None,
        )
        return layer, info

    def _decode(
        self, reader: _HeaderReader, format: str, filename: str, size: int
    ) -> tuple[HeaderInfo, tuple[bytes, ...]]:
        if format == "qcow2":
            return reader.decode(qcow2.decode_qemu), ()
        from simulator.formats import qcow, qed, vmdk
        from simulator.formats.plain import qemu_virtual_size

        if format == "qcow":
            return reader.decode(qcow.decode_qemu), ()
        if format == "qed":
            return reader.decode(qed.decode_qemu), ()
        if format == "vmdk":
            found: list[tuple[bytes, ...]] = []

            def decode_vmdk(header: Header) -> HeaderInfo:
                info, extents = vmdk.decode_qemu(header)
                found[:] = [extents]
                return info

            info = reader.decode(decode_vmdk)
            return info, found[0]
        header = reader.header(FIRST_READ)
        return HeaderInfo(format=format, virtual_size=qemu_virtual_size(format, header, size)), ()

    def _check_extent(self, descriptor: str, extent: bytes, name: str) -> None:
        path = backing_names.resolve_relative_qemu(descriptor, decode_c_name(extent))
        if self.storage.kind(path) is None:
            raise ChainError(
                ErrorCode.BACKING_MISSING,
                f"Could not open '{path}': No such file or directory",
                name,
            )

    def _next(self, layer: Layer, info: HeaderInfo) -> tuple[str | None, str | None]:
        if layer.backing_full is None:
            return None, None
        return layer.backing_full, info.backing_format

    def _file_of(self, name: str, format: str | None) -> tuple[str, str | None]:
        """The local file a name opens and the driver it is opened with (None: probe)."""
        if name.startswith("json:"):
            return _qemu_json_file(name, format)
        if backing_names.is_file_name(name):
            return name, format
        protocol, _, rest = name.partition(":")
        if protocol in QEMU_FILE_PROTOCOLS:
            return rest, format
        if protocol in QEMU_NETWORK_PROTOCOLS:
            raise _network_backing(name)
        raise ChainError(
            ErrorCode.BACKING_NAME_INVALID,
            f"Could not open '{name}': Unknown protocol '{protocol}'",
            name,
        )


def _network_backing(name: str) -> ChainError:
    return ChainError(
        ErrorCode.NETWORK_BACKING,
        f"Could not open '{name}': the chain continues on a network server "
        "that the prober does not contact",
        name,
    )


def _qemu_json_file(name: str, recorded: str | None) -> tuple[str, str | None]:
    """How qemu-img opens a json: name: the recorded format, if any, wins over the json driver."""
    import json

    try:
        document = json.loads(name.removeprefix("json:"))
    except ValueError as error:
        raise ChainError(
            ErrorCode.BACKING_NAME_INVALID, f"Could not parse the JSON options: {error}", name
        ) from None
    if not isinstance(document, dict):
        raise ChainError(
            ErrorCode.BACKING_NAME_INVALID, "Invalid JSON object given for a json: name", name
        )
    options = _flatten(document)
    json_driver = options.get("driver")
    if json_driver is not None and not isinstance(json_driver, str):
        raise ChainError(ErrorCode.BACKING_NAME_INVALID, "driver must be a string", name)
    driver = recorded if recorded is not None else json_driver
    # The recorded format is put in the options first; the json's own driver cannot replace it.
    overridden = recorded is not None and json_driver not in (None, recorded)
    network_keys = ("file.driver",) if overridden else ("driver", "file.driver")
    if any(options.get(key) in QEMU_NETWORK_PROTOCOLS for key in network_keys):
        raise _network_backing(name)
    if driver is not None and driver not in QEMU_DRIVERS:
        raise ChainError(ErrorCode.UNKNOWN_FORMAT, f"Unknown driver '{driver}'", name)
    if driver in QEMU_FILE_PROTOCOLS:
        return str(options.get("filename", "")), driver
    if overridden and json_driver not in QEMU_FORMATS:
        # A format driver without the "file" child the json's protocol driver would have been.
        raise ChainError(
            ErrorCode.BACKING_NAME_INVALID, 'A block device must be specified for "file"', name
        )
    filename = options.get("file.filename", options.get("filename"))
    if not isinstance(filename, str):
        raise ChainError(
            ErrorCode.BACKING_NAME_INVALID, f"Could not open '{name}': no file name given", name
        )
    return filename, driver


def _flatten(document: dict[str, object], prefix: str = "") -> dict[str, object]:
    """qemu's qdict_flatten: nested objects become dotted keys."""
    flat: dict[str, object] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _qemu_open_code(error: OSError, is_top: bool) -> ErrorCode:
    if error.errno == errno.ENOENT:
        return ErrorCode.NOT_FOUND if is_top else ErrorCode.BACKING_MISSING
    if error.errno in (errno.EACCES, errno.EPERM):
        return ErrorCode.PERMISSION_DENIED
    return ErrorCode.READ_FAILED


def probe(path: str, profile: Profile, format: str | None = None) -> Chain:
    """Convenience: probe ``path`` on the local disk under ``profile``."""
    return Prober(profile).probe(path, format)


__all__ = ["ProbeStats", "Prober", "probe"]
