"""``chainsuite probe``: print a chain, or the error the rules give, and nothing else."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from simulator.model import Chain, ChainError, ErrorCode, Layer
from simulator.prober import Prober
from simulator.profiles import get_profile


def run_probe(path: str, format: str | None, profile_name: str, output: str) -> int:
    prober = Prober(get_profile(profile_name))
    try:
        chain = prober.probe(path, format)
    except ChainError as error:
        return _report_error(error, output)
    except (OSError, ValueError, RecursionError) as error:
        # A defect or an unforeseen fault of the disk must still read as one line.
        return _report_error(ChainError(ErrorCode.READ_FAILED, str(error), path), output)
    if output == "json":
        _write_json_list(chain.to_json())
    else:
        _write_human(chain, sys.stdout)
    return 0


def _report_error(error: ChainError, output: str) -> int:
    message = error.message.replace("\n", "\\n")
    _stream(sys.stderr).write(f"{error.code.value}: {message}\n")
    if output == "json":
        _write_json({"error": error.to_json()})
    return 1


def _write_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2))
    sys.stdout.write("\n")


def _write_json_list(items: list[dict[str, Any]]) -> None:
    """One layer per line: readable, and written by json's fast C encoder."""
    sys.stdout.write("[\n  " + ",\n  ".join(json.dumps(item) for item in items) + "\n]\n")


def _stream(stream: TextIO) -> TextIO:
    """Names may hold bytes that are not text: show them escaped rather than fail."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    return stream


def _write_human(chain: Chain, stream: TextIO) -> None:
    out = _stream(stream)
    blocks = [_human_layer(layer) for layer in chain.layers]
    out.write("\n\n".join(blocks))
    end = "terminated" if chain.terminated else "unknown (the rules do not look further)"
    out.write(f"\n\nchain: {len(chain.layers)} layer(s), end {end}\n")


def _human_layer(layer: Layer) -> str:
    lines = [f"image: {layer.filename}", f"file format: {layer.format}"]
    if layer.type.value != "file":
        lines.append(f"type: {layer.type.value}")
    if layer.protocol:
        hosts = ", ".join(_host(host.to_json()) for host in layer.hosts)
        lines.append(f"protocol: {layer.protocol}" + (f" ({hosts})" if hosts else ""))
    if layer.virtual_size is not None:
        lines.append(f"virtual size: {_size(layer.virtual_size)}")
    lines.append(f"index: {layer.index}")
    if layer.relative_path is not None:
        lines.append(f"relative path: {layer.relative_path}")
    if layer.backing_raw is not None:
        backing = f"backing file: {layer.backing_raw}"
        if layer.backing_full is not None and layer.backing_full != layer.backing_raw:
            backing += f" (actual path: {layer.backing_full})"
        lines.append(backing)
    if layer.backing_format_raw is not None:
        lines.append(f"backing file format: {layer.backing_format_raw}")
    if layer.data_file is not None:
        lines.append(f"data file: {layer.data_file}")
    return "\n".join(lines)


def _host(host: dict[str, Any]) -> str:
    if "socket" in host:
        return f"unix:{host['socket']}"
    name = host.get("name", "")
    return f"{name}:{host['port']}" if "port" in host else str(name)


def _size(value: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    scaled = float(value)
    unit = 0
    while scaled >= 1024 and unit < len(units) - 1:
        scaled /= 1024
        unit += 1
    shown = f"{scaled:.3g}" if unit else str(value)
    return f"{shown} {units[unit]} ({value} bytes)"
