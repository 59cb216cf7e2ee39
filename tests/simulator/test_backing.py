"""Tests for simulator.backing: backing strings to locations, as libvirt 9.x reads them.

The table ``LIBVIRT_PARSE_CASES`` mirrors the "Backing store parse N" cases of libvirt's
tests/virstoragetest.c (9.x), in order; N is the case's number in that file. The other
edge cases were checked against libvirt 9.0.0's virStorageSourceNewFromBackingAbsolute.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.backing import (
    BackingLocation,
    BackingNameError,
    LocationKind,
    is_file_name,
    is_relative,
    parse_backing,
    resolve_relative_libvirt,
    resolve_relative_qemu,
)
from simulator.model import NetworkHost

FILE = LocationKind.FILE
NET = LocationKind.NETWORK


def tcp(name: str | None, port: int | None = None) -> NetworkHost:
    return NetworkHost(name=name, port=port)


def unix(socket: str) -> NetworkHost:
    return NetworkHost(transport="unix", socket=socket)


def net(
    protocol: str,
    path: str | None,
    *hosts: NetworkHost,
    volume: str | None = None,
    inline_auth: bool = False,
) -> BackingLocation:
    return BackingLocation(
        kind=NET,
        path=path,
        protocol=protocol,
        hosts=hosts,
        volume=volume,
        inline_auth=inline_auth,
    )


@dataclass(frozen=True)
class Error:
    """An expected refusal: the start of the message libvirt reports."""

    message: str


ISCSI_NOAUTH = "iqn.2016-12.com.virttest:emulated-iscsi-noauth.target"
ISCSI_AUTH = "iqn.2016-12.com.virttest:emulated-iscsi-auth.target"
VMWARE_URL = (
    "https://host/folder/esx6.5-rhel7.7-x86%5f64/esx6.5-rhel7.7-x86%5f64-flat.vmdk"
    "?dcPath=data&dsName=esx6.5-matrix"
)
VMWARE_PATH = "folder/esx6.5-rhel7.7-x86_64/esx6.5-rhel7.7-x86_64-flat.vmdk"
GLUSTER_SERVERS = (
    '[ { "type":"tcp","host":"example.com","port":"1234"},'
    '{ "type":"unix","socket":"/path/socket"},'
    '{ "type":"%s","host":"example.com"}]'
)
GLUSTER_HOSTS = (tcp("example.com", 1234), unix("/path/socket"), tcp("example.com", 24007))

LIBVIRT_PARSE_CASES: list[tuple[int, str, BackingLocation | Error]] = [
    (1, "path", BackingLocation(kind=FILE, path="path")),
    (2, "fat:/somedir", BackingLocation(kind=LocationKind.DIR, path="/somedir", format="fat")),
    (3, "://", Error("failed to parse backing file location '://'")),
    (4, "http://example.com", net("http", "", tcp("example.com", 80))),
    (5, "http://example.com/", net("http", "", tcp("example.com", 80))),
    (6, "http://example.com/file", net("http", "file", tcp("example.com", 80))),
    (
        7,
        "http://user:pass@example.com/file",
        net("http", "file", tcp("example.com", 80), inline_auth=True),
    ),
    (
        8,
        "rbd:testshare:id=asdf:mon_host=example.com",
        net("rbd", "testshare", tcp("example.com")),
    ),
    (
        9,
        "nbd:example.org:6000:exportname=blah",
        net("nbd", "blah", tcp("example.org", 6000)),
    ),
    (10, "nbd:example.org:6000:exportname=:", net("nbd", ":", tcp("example.org", 6000))),
    (
        11,
        "nbd:example.org:6000:exportname=:test",
        net("nbd", ":test", tcp("example.org", 6000)),
    ),
    (12, "nbd:[::1]:6000:exportname=:test", net("nbd", ":test", tcp("::1", 6000))),
    (
        13,
        "nbd:127.0.0.1:6000:exportname=:test",
        net("nbd", ":test", tcp("127.0.0.1", 6000)),
    ),
    (14, "nbd:unix:/tmp/sock:exportname=/", net("nbd", "/", unix("/tmp/sock"))),
    (15, "nbd:unix:/tmp/sock:", net("nbd", None, unix("/tmp/sock:"))),
    (16, "nbd:unix:/tmp/sock::exportname=:", net("nbd", ":", unix("/tmp/sock:"))),
    (17, "nbd://example.org:1234", net("nbd", None, tcp("example.org", 1234))),
    (18, "nbd://example.org:1234/", net("nbd", None, tcp("example.org", 1234))),
    (
        19,
        "nbd://example.org:1234/exportname",
        net("nbd", "exportname", tcp("example.org", 1234)),
    ),
    (20, "nbd+unix://?socket=/tmp/sock", net("nbd", None, unix("/tmp/sock"))),
    (21, "nbd+unix:///?socket=/tmp/sock", net("nbd", None, unix("/tmp/sock"))),
    (22, "nbd+unix:////?socket=/tmp/sock", net("nbd", "/", unix("/tmp/sock"))),
    (23, "nbd+unix:///exp?socket=/tmp/sock", net("nbd", "exp", unix("/tmp/sock"))),
    (24, "nbd+unix:////exp?socket=/tmp/sock", net("nbd", "/exp", unix("/tmp/sock"))),
    (
        25,
        "iscsi://testuser:testpass@example.org:1234/exportname",
        net("iscsi", "exportname", tcp("example.org", 1234), inline_auth=True),
    ),
    (26, "json:", Error("cannot parse json : parse error: premature EOF")),
    (27, "json:asdgsdfg", Error("cannot parse json asdgsdfg:")),
    (28, "json:{}", Error("JSON backing volume definition '{}' lacks driver name")),
    (
        29,
        'json: { "file.driver":"blah"}',
        Error("missing parser implementation for JSON backing volume driver 'blah'"),
    ),
    (
        30,
        'json:{"file.driver":"file"}',
        Error("missing 'filename' field in JSON backing volume definition"),
    ),
    (
        31,
        'json:{"file.driver":"file", "file.filename":"/path/to/file"}',
        BackingLocation(kind=FILE, path="/path/to/file"),
    ),
    (
        32,
        'json:{"file.driver":"file", "filename":"/path/to/file"}',
        Error("missing 'filename' field in JSON backing volume definition"),
    ),
    (
        33,
        'json:{"file" : { "driver":"file","filename":"/path/to/file"}}',
        BackingLocation(kind=FILE, path="/path/to/file"),
    ),
    (
        34,
        'json:{"driver":"file","filename":"/path/to/file"}',
        BackingLocation(kind=FILE, path="/path/to/file"),
    ),
    (
        35,
        'json:{"file.driver":"host_device", "file.filename":"/path/to/dev"}',
        BackingLocation(kind=FILE, path="/path/to/dev"),
    ),
    (
        36,
        'json:{"file.driver":"host_cdrom", "file.filename":"/path/to/cdrom"}',
        BackingLocation(kind=FILE, path="/path/to/cdrom"),
    ),
    (
        37,
        'json:{"file.driver":"http", "file.url":"http://example.com/file"}',
        net("http", "file", tcp("example.com", 80)),
    ),
    (
        38,
        'json:{"file":{ "driver":"http","url":"http://example.com/file"}}',
        net("http", "file", tcp("example.com", 80)),
    ),
    (
        39,
        'json:{"file.driver":"ftp", "file.url":"http://example.com/file"}',
        Error("expected protocol 'ftp' but got 'http' in URI JSON volume definition"),
    ),
    (
        40,
        'json:{"file.driver":"gluster", "file.filename":"gluster://example.com/vol/file"}',
        net("gluster", "file", tcp("example.com", 24007), volume="vol"),
    ),
    (
        41,
        'json:{"file":{"driver":"gluster","volume":"testvol","path":"img.qcow2",'
        '"server":' + GLUSTER_SERVERS % "tcp" + "}}",
        net("gluster", "img.qcow2", *GLUSTER_HOSTS, volume="testvol"),
    ),
    (
        42,
        'json:{"file.driver":"gluster","file.volume":"testvol","file.path":"img.qcow2",'
        '"file.server":' + GLUSTER_SERVERS % "inet" + "}",
        net("gluster", "img.qcow2", *GLUSTER_HOSTS, volume="testvol"),
    ),
    (
        43,
        'json:{"driver": "raw","file": {"server.0.host": "A.A.A.A","server.1.host": "B.B.B.B",'
        '"server.2.host": "C.C.C.C","driver": "gluster","path": "raw",'
        '"server.0.type": "tcp","server.1.type": "tcp","server.2.type": "tcp",'
        '"server.0.port": "24007","server.1.port": "24007","server.2.port": "24007",'
        '"volume": "vol1"}}',
        BackingLocation(
            kind=NET,
            path="raw",
            protocol="gluster",
            hosts=(tcp("A.A.A.A", 24007), tcp("B.B.B.B", 24007), tcp("C.C.C.C", 24007)),
            volume="vol1",
            format="raw",
        ),
    ),
    (
        44,
        'json:{"file":{"driver":"nbd","path":"/path/to/socket"}}',
        net("nbd", None, unix("/path/to/socket")),
    ),
    (
        45,
        'json:{"driver":"nbd","path":"/path/to/socket"}',
        net("nbd", None, unix("/path/to/socket")),
    ),
    (
        46,
        'json:{"file.driver":"nbd","file.path":"/path/to/socket"}',
        net("nbd", None, unix("/path/to/socket")),
    ),
    (
        47,
        'json:{"file":{"driver":"nbd","export":"blah","host":"example.org","port":"6000"}}',
        net("nbd", "blah", tcp("example.org", 6000)),
    ),
    (
        48,
        'json:{"file.driver":"nbd","file.export":"blah","file.host":"example.org",'
        '"file.port":"6000"}',
        net("nbd", "blah", tcp("example.org", 6000)),
    ),
    (
        49,
        'json:{"file":{"driver":"nbd","export":"blah",'
        '"server": { "type":"inet","host":"example.org","port":"6000"}}}',
        net("nbd", "blah", tcp("example.org", 6000)),
    ),
    (
        50,
        'json:{"file":{"driver":"nbd","server": { "type":"unix","path":"/path/socket"}}}',
        net("nbd", None, unix("/path/socket")),
    ),
    (
        51,
        'json:{"file":{"driver":"ssh","host":"example.org","port":"6000","path":"blah",'
        '"user":"user"}}',
        net("ssh", "blah", tcp("example.org", 6000)),
    ),
    (
        52,
        'json:{"file.driver":"ssh","file.host":"example.org","file.port":"6000",'
        '"file.path":"blah","file.user":"user"}',
        net("ssh", "blah", tcp("example.org", 6000)),
    ),
    (
        53,
        'json:{"file":{"driver":"ssh","path":"blah",'
        '"server":{ "host":"example.org","port":"6000"},"user":"user"}}',
        net("ssh", "blah", tcp("example.org", 6000)),
    ),
    (
        54,
        'json:{"file.driver":"rbd","file.filename":"rbd:testshare:id=asdf:mon_host=example.com"}',
        net("rbd", "testshare", tcp("example.com")),
    ),
    (
        55,
        'json:{"file":{"driver":"rbd","image":"test","pool":"libvirt","conf":"/path/to/conf",'
        '"snapshot":"snapshotname",'
        '"server":[ {"host":"example.com","port":"1234"},{"host":"example2.com"}]}}',
        net("rbd", "test", tcp("example.com", 1234), tcp("example2.com"), volume="libvirt"),
    ),
    (
        56,
        'json:{ "file": { "driver": "raw","file": {'
        '"driver": "file","filename": "/path/to/file" } } }',
        BackingLocation(kind=FILE, path="/path/to/file", format="raw"),
    ),
    (
        57,
        'json:{"file":{"driver":"iscsi","transport":"tcp","portal":"test.org",'
        '"target":"' + ISCSI_NOAUTH + '"}}',
        net("iscsi", f"{ISCSI_NOAUTH}/0", tcp("test.org", 3260)),
    ),
    (
        58,
        'json:{"file":{"driver":"iscsi","transport":"tcp","portal":"test.org","user":"testuser",'
        '"target":"' + ISCSI_AUTH + '"}}',
        net("iscsi", f"{ISCSI_AUTH}/0", tcp("test.org", 3260), inline_auth=True),
    ),
    (
        59,
        'json:{"file":{"driver":"iscsi","transport":"tcp","portal":"test.org",'
        '"password":"testpass","target":"' + ISCSI_AUTH + '"}}',
        net("iscsi", f"{ISCSI_AUTH}/0", tcp("test.org", 3260), inline_auth=True),
    ),
    (
        60,
        'json:{"file":{"driver":"iscsi","transport":"tcp","portal":"test.org:1234",'
        '"target":"' + ISCSI_NOAUTH + '","lun":"6"}}',
        net("iscsi", f"{ISCSI_NOAUTH}/6", tcp("test.org", 1234)),
    ),
    (
        61,
        'json:{"file":{"driver":"iscsi","transport":"tcp","portal":"[2001::0]:1234",'
        '"target":"' + ISCSI_NOAUTH + '","lun":6}}',
        net("iscsi", f"{ISCSI_NOAUTH}/6", tcp("[2001::0]", 1234)),
    ),
    (
        62,
        'json:{"file":{"driver":"iscsi","transport":"tcp","portal":"[2001::0]",'
        '"target":"' + ISCSI_NOAUTH + '","lun":6}}',
        net("iscsi", f"{ISCSI_NOAUTH}/6", tcp("[2001::0]", 3260)),
    ),
    (
        63,
        'json:{"file":{"driver":"sheepdog","vdi":"test",'
        '"server":{ "type":"inet","host":"example.com","port":"321"}}}',
        net("sheepdog", "test", tcp("example.com", 321)),
    ),
    (
        64,
        'json:{"driver": "raw","file": {"server.host": "10.10.10.10","server.port": "7000",'
        '"tag": "","driver": "sheepdog","server.type": "inet","vdi": "Alice"}}',
        BackingLocation(
            kind=NET,
            path="Alice",
            protocol="sheepdog",
            hosts=(tcp("10.10.10.10", 7000),),
            format="raw",
        ),
    ),
    (
        65,
        'json:{"file":{"driver":"vxhs","vdisk-id":"c6718f6b-0401-441d-a8c3-1f0064d75ee0",'
        '"server": {  "host":"example.com","port":"9999"}}}',
        net("vxhs", "c6718f6b-0401-441d-a8c3-1f0064d75ee0", tcp("example.com", 9999)),
    ),
    (
        66,
        'json:{"file":{"driver":"nfs","user":2,"group":9,"path":"/foo/bar/baz",'
        '"server": {  "host":"example.com","type":"inet"}}}',
        net("nfs", "/foo/bar/baz", tcp("example.com")),
    ),
    (
        67,
        'json:{ "driver": "raw","offset": 10752,"size": 4063232,'
        '"file": { "driver": "file","filename": "/tmp/testfle"}}',
        BackingLocation(
            kind=FILE, path="/tmp/testfle", format="raw", slice_offset=10752, slice_size=4063232
        ),
    ),
    (
        68,
        'json:{ "file.cookie": "vmware_soap_session=\\"0c8db85112873a79b7ef74f294cb70ef7f\\"",'
        '"file.sslverify": false,"file.driver": "https",'
        '"file.url": "' + VMWARE_URL + '","file.timeout": 2000}',
        net("https", VMWARE_PATH, tcp("host", 443)),
    ),
    (
        69,
        'json:{ "file.cookie": "vmware_soap_session=\\"0c8db85112873a79b7ef74f294cb70ef7f\\"",'
        '"file.sslverify": "off","file.driver": "https",'
        '"file.url": "' + VMWARE_URL + '","file.timeout": 2000}',
        net("https", VMWARE_PATH, tcp("host", 443)),
    ),
    (
        70,
        'json:{"file":{"driver": "nvme","device": "0000:01:00.0","namespace": 1}}',
        net("nvme", "0000:01:00.0"),
    ),
]


@pytest.mark.parametrize(
    ("backing", "expected"),
    [(backing, expected) for _, backing, expected in LIBVIRT_PARSE_CASES],
    ids=[f"backing-store-parse-{number}" for number, _, _ in LIBVIRT_PARSE_CASES],
)
def test_libvirt_backing_store_parse_case(backing: str, expected: BackingLocation | Error) -> None:
    # virstoragetest.c "Backing store parse N", N as in the test id.
    if isinstance(expected, Error):
        with pytest.raises(BackingNameError) as raised:
            parse_backing(backing)
        assert raised.value.message.startswith(expected.message)
    else:
        assert parse_backing(backing) == expected


def test_the_libvirt_table_has_all_seventy_cases_in_order() -> None:
    assert [number for number, _, _ in LIBVIRT_PARSE_CASES] == list(range(1, 71))


# Strings libvirt 9.0.0 refuses, with the start of its message.
REFUSED: list[tuple[str, str]] = [
    ("foo:bar.raw", "invalid backing protocol 'foo'"),
    ("file:base", "invalid backing protocol 'file'"),
    ("sheepdog:x", "backing store parser is not implemented for protocol sheepdog"),
    ("none:x", "backing store parser is not implemented for protocol none"),
    ("gluster:x", "malformed backing store path for protocol gluster"),
    ("http:x", "malformed backing store path for protocol http"),
    ("nbd:", "malformed nbd string 'nbd:'"),
    ("nbd:unix:", "malformed nbd string 'nbd:unix:'"),
    ("nbd::5", "malformed nbd string 'nbd::5'"),
    ("nbd:h", "malformed nbd string 'nbd:h'"),
    ("nbd:[]:5", "malformed nbd string 'nbd:[]:5'"),
    ("nbd:[::1]", "malformed nbd string 'nbd:[::1]'"),
    ("nbd:h:99999", "port '99999' out of range"),
    ("nbd:h:-0", "failed to parse port number '-0'"),
    ("NBD://h/", "invalid backing protocol 'NBD'"),
    ("nbd+foo://h/", "invalid protocol transport type 'foo'"),
    ("nbd+://h/", "invalid protocol transport type ''"),
    ("http://h:/x", "failed to parse backing file location 'http://h:/x'"),
    ("http://h/p q", "failed to parse backing file location"),
    ("http://h/p%zz", "failed to parse backing file location"),
    ("nbd://h:2147483648/", "failed to parse backing file location"),
    ("gluster://h/vol", "missing volume name or file name in gluster source path 'vol'"),
    ("gluster://h//p", "missing volume name or file name in gluster source path '/p'"),
    ("gluster://h:5", "missing volume name or file name in gluster source path ''"),
    # libvirt fails here without a message of its own: the URI reference has no scheme.
    ("a?b:c://d", "backing store 'a?b:c://d' is a URI reference without a scheme"),
    ("rbd:p/i:id=a:id=b", "duplicate 'id' found in 'i'"),
    ("rbd:p/i:mon_host=h\\:x", "failed to parse port number 'x'"),
    # libvirt reads the port 3 characters past ']', here past the ':' it cut to a NUL.
    ("rbd:p/i:mon_host=[\\:\\:1]:conf=abc", "failed to parse port number 'onf=abc'"),
    # JSON syntax, as yajl 2.1 refuses it (libvirt adds a context snippet after this).
    ('json:{"driver":"file","filename":"/a","driver":"x"}', "cannot parse json {"),
    ('json:{"driver":"file","filename":"/a"}x', "cannot parse json"),
    ('json:{"driver":"file","filename":"/a"} 1', "cannot parse json"),
    ('json:{"driver":"file","filename":"/a"}//c', "cannot parse json"),
    ('json:{"driver":"file","filename":"/a",}', "cannot parse json"),
    ('json:{"driver":"file","filename":NaN}', "cannot parse json"),
    ('json:{"driver":"file","filename":"a\tb"}', "cannot parse json"),
    ('json:{"driver":"file","filename":"\\x41"}', "cannot parse json"),
    ('json:{"driver":"file","filename":"/a","x":01}', "cannot parse json"),
    ('json:{"driver":"file","filename":"/a","x":1.}', "cannot parse json"),
    ('json:{"driver":"file","filename":"/\udcff"}', "cannot parse json"),
    # libvirt fails here without a message of its own: the document is no JSON object.
    ('json:"x"', "JSON backing volume definition '\"x\"' is not a JSON object"),
    ("json:1", "JSON backing volume definition '1' is not a JSON object"),
    ("json:null", "JSON backing volume definition 'null' is not a JSON object"),
    ("json:[1]", "JSON backing volume definition '[1]' is not a JSON object"),
    ('json:{"file.filename":"/a","file":{"driver":"file"}}', "can't deflatten colliding key"),
    ('json:{"a.b":1,"a":2}', "can't deflatten colliding key 'a'"),
    (
        'json:{"a":1,"a.b":2,"driver":"file","filename":"x"}',
        "mixing nested objects and values is forbidden in JSON deflattening",
    ),
    ('json:{"0":{"driver":"file","filename":"/a"}}', "JSON backing volume definition"),
    ('json:{"file":{}}', "JSON backing volume definition '{\"file\":{}}' lacks driver name"),
    ('json:{"file":5}', "JSON backing volume definition '{\"file\":5}' lacks driver name"),
    ('json:{"driver":5}', "JSON backing volume definition '{\"driver\":5}' lacks driver name"),
    (
        'json:{"file":{"driver":"nbd","host":"h"},"driver":null}',
        "JSON backing volume definition",
    ),
    (
        'json:{"driver":"qcow2","file":{"driver":"file","filename":"/a"}}',
        "missing parser implementation for JSON backing volume driver 'qcow2'",
    ),
    (
        'json:{"driver":"raw","file":{"driver":"raw","file":{"driver":"file","filename":"/a"}}}',
        'JSON backing volume definition \'{"driver":"raw"',
    ),
    ('json:{"driver":"raw"}', "JSON backing volume definition '{\"driver\":\"raw\"}' lacks 'file'"),
    (
        'json:{"driver":"raw","offset":1.5,"file":{"driver":"file","filename":"/a"}}',
        "malformed 'offset' property of 'raw' driver",
    ),
    (
        'json:{"driver":"raw","size":"5","file":{"driver":"file","filename":"/a"}}',
        "malformed 'size' property of 'raw' driver",
    ),
    ('json:{"driver":"file","filename":5}', "missing 'filename' field"),
    ('json:{"driver":"http"}', "missing 'url' in JSON backing volume definition"),
    (
        'json:{"driver":"http","url":"nbd://h/p"}',
        "expected protocol 'http' but got 'nbd' in URI JSON volume definition",
    ),
    (
        'json:{"driver":"https","url":"https://h/p","sslverify":"yes"}',
        "malformed 'sslverify' field in backing store definition",
    ),
    (
        'json:{"driver":"https","url":"https://h/p","cookie":"a=b;"}',
        "malformed http cookie '' in backing store definition",
    ),
    (
        'json:{"driver":"http","url":"http://h/p","cookie":5}',
        "wrong format of 'cookie' field in backing store definition",
    ),
    (
        'json:{"driver":"http","url":"http://h/p","timeout":"5"}',
        "malformed 'timeout' field in backing store definition",
    ),
    (
        'json:{"driver":"gluster","volume":"v","path":"p","server":[]}',
        "at least 1 server is necessary in JSON backing definition for gluster volume",
    ),
    (
        'json:{"driver":"gluster","volume":"v","path":"p","server":[{"type":"rdma","host":"h"}]}',
        "backing store protocol 'rdma' is not yet supported",
    ),
    (
        'json:{"driver":"gluster","volume":"v","path":"p","server":[5]}',
        "missing socket address type in JSON backing volume definition",
    ),
    (
        'json:{"driver":"gluster","volume":"v","path":"p","server":[null]}',
        "missing socket address type in JSON backing volume definition",
    ),
    (
        'json:{"driver":"iscsi","portal":"h","target":"t"}',
        "only TCP transport is supported for iSCSI volumes",
    ),
    (
        'json:{"driver":"iscsi","transport":"tcp","portal":"h:","target":"t"}',
        "failed to parse port number ''",
    ),
    (
        'json:{"driver":"iscsi","filename":"http://h/t/1"}',
        "expected protocol 'iscsi' but got 'http'",
    ),
    ('json:{"driver":"nbd"}', "missing host specification of NBD server"),
    ('json:{"driver":"nbd","server":{}}', "missing host specification of NBD server"),
    ('json:{"driver":"nbd","server":{"type":"inet"}}', "missing hostname for tcp backing server"),
    ('json:{"driver":"nbd","server":{"type":"unix"}}', "missing socket path for udp backing"),
    ('json:{"driver":"nbd","host":"h","port":"70000"}', "port '70000' out of range"),
    ('json:{"driver":"sheepdog","filename":"vdi"}', "missing sheepdog URI in JSON backing"),
    ('json:{"driver":"sheepdog","vdi":"v"}', "missing remote server specification in JSON"),
    ('json:{"driver":"ssh","path":"p","host":"h","port":"x"}', "failed to parse port number 'x'"),
    ('json:{"driver":"ssh","host":"h"}', "missing host/server or path of SSH JSON backing"),
    ('json:{"driver":"rbd"}', "missing pool or image name in ceph backing volume JSON"),
    ('json:{"driver":"vxhs","vdisk-id":"v"}', "missing 'vdisk-id' or 'server' attribute"),
    ('json:{"driver":"nfs","user":1,"group":2}', "missing 'server' attribute in JSON backing"),
    (
        'json:{"driver":"nfs","server":{"host":"h"},"user":"1","group":2,"path":"/p"}',
        "missing 'user' or 'group' attribute in JSON backing definition for NFS volume",
    ),
    (
        'json:{"driver":"nfs","server":{"host":"h"},"user":2147483648,"group":2,"path":"/p"}',
        "missing 'user' or 'group' attribute",
    ),
    (
        'json:{"driver":"nfs","server":{"host":"h"},"user":1,"group":2}',
        "missing 'path' attribute in JSON backing definition for NFS volume",
    ),
    (
        'json:{"driver":"nvme","device":"zz","namespace":1}',
        "missing or malformed 'device' field of 'nvme' storage",
    ),
    (
        'json:{"driver":"nvme","device":"100000000:1:2.3","namespace":1}',
        "missing or malformed 'device' field of 'nvme' storage",
    ),
    (
        'json:{"driver":"nvme","device":"0:1:2.3","namespace":0}',
        "missing or malformed 'namespace' field of 'nvme' storage",
    ),
]


@pytest.mark.parametrize(("backing", "message"), REFUSED)
def test_refused_strings_report_libvirts_message(backing: str, message: str) -> None:
    with pytest.raises(BackingNameError) as raised:
        parse_backing(backing)
    assert raised.value.message.startswith(message)


# Strings libvirt 9.0.0 accepts, with what it makes of them.
ACCEPTED: list[tuple[str, BackingLocation]] = [
    ("./foo:bar.raw", BackingLocation(kind=FILE, path="./foo:bar.raw")),
    ("a/b:c", BackingLocation(kind=FILE, path="a/b:c")),
    ("", BackingLocation(kind=FILE, path="")),
    ("fat:", BackingLocation(kind=LocationKind.DIR, path="", format="fat")),
    # A C string ends at its first NUL.
    ("base\0:junk", BackingLocation(kind=FILE, path="base")),
    ("nbd:h:1\0:exportname=x", net("nbd", None, tcp("h", 1))),
    ("nbd:h: 5", net("nbd", None, tcp("h", 5))),
    ("nbd:h:+5", net("nbd", None, tcp("h", 5))),
    ("nbd://h:0/", net("nbd", None, tcp("h", 10809))),
    ("nbd://h:00080/", net("nbd", None, tcp("h", 80))),
    ("nbd://h:99999/", net("nbd", None, tcp("h", 99999))),
    ("nbd://h:2147483647/", net("nbd", None, tcp("h", 2147483647))),
    ("nbd+unix://?socket=%2Ftmp", net("nbd", None, unix("%2Ftmp"))),
    ("nbd+unix://h:5/?socket=/s", net("nbd", None, NetworkHost("h", 5, "unix", "/s"))),
    # A "://" anywhere sends the string to the URI parser, even a legacy nbd: string.
    ("nbd:h:5:exportname=a://b", net("nbd", "h:5:exportname=a://b", tcp(None, 10809))),
    ("http://@h/x", net("http", "x", tcp("h", 80), inline_auth=True)),
    ("http://us%40er@h/", net("http", "", tcp("h", 80), inline_auth=True)),
    ("http://[::1]:8/p", net("http", "p", tcp("::1", 8))),
    ("http://[fe80::1%25eth0]/p", net("http", "p", tcp("fe80::1%eth0", 80))),
    ("http://h/a%20b%00c", net("http", "a b", tcp("h", 80))),
    ("http://h/p%41", net("http", "pA", tcp("h", 80))),
    ("http://h/p?x=1#f", net("http", "p", tcp("h", 80))),
    ("http:///p", net("http", "p", tcp(None, 80))),
    ("iscsi://h/iqn.x/1", net("iscsi", "iqn.x/1", tcp("h", 3260))),
    ("gluster://h/vol/p", net("gluster", "p", tcp("h", 24007), volume="vol")),
    ("gluster+unix:///v/p?socket=/s", net("gluster", "p", unix("/s"), volume="v")),
    ("none://h/x", net("none", "x", tcp("h"))),
    ("rbd:", net("rbd", "")),
    (
        "rbd:a/b@c:conf=/x:mon_host=[\\:\\:1]\\:6789\\;h2\\:1\\,h3",
        net("rbd", "b", tcp("::1", 6789), tcp("h2", 1), tcp("h3"), volume="a"),
    ),
    # Unescaped colons end the option: mon_host is "[" alone.
    ("rbd:p/i:mon_host=[::1]", net("rbd", "i", tcp("["), volume="p")),
    ('json:{"file":{"driver":"file"},"file.filename":"/a"}', BackingLocation(kind=FILE, path="/a")),
    ('json:\v{"driver":"file","filename":"/a"}\f', BackingLocation(kind=FILE, path="/a")),
    # yajl flushes with one more space: a string left open after the document is ignored.
    ('json:{"driver":"file","filename":"/a"} "abc', BackingLocation(kind=FILE, path="/a")),
    ('json:{"driver":"file","filename":"/a\\u0000b"}', BackingLocation(kind=FILE, path="/a")),
    ('json:{"driver":"file","filename":"/a\\ud800xyz"}', BackingLocation(kind=FILE, path="/a?xyz")),
    (
        'json:{"driver":"file","filename":"/a\\ud83d\\ude00"}',
        BackingLocation(kind=FILE, path="/a😀"),
    ),
    (
        'json:{"driver":"file","filename":"/a\\ud800\\u0041"}',
        BackingLocation(kind=FILE, path="/a𐁁"),
    ),
    (
        'json:{"driver":"file","filename":"/\\udc00"}',
        BackingLocation(kind=FILE, path="/\udced\udcb0\udc80"),
    ),
    # Undecodable bytes (here a UTF-8-encoded surrogate) pass yajl's lenient UTF-8 check.
    (
        'json:{"driver":"file","filename":"/\udced\udca0\udc80"}',
        BackingLocation(kind=FILE, path="/\udced\udca0\udc80"),
    ),
    (
        'json:{"driver":"file","filename":"x","server":[{"a.b":1}]}',
        BackingLocation(kind=FILE, path="x"),
    ),
    ('json:{"driver":"nbd","host":"h","port":6000}', net("nbd", None, tcp("h", 10809))),
    ('json:{"driver":"nbd","path":"/s","host":"h"}', net("nbd", None, unix("/s"))),
    ('json:{"driver":"nbd","server":{"type":"unix","socket":"/s"}}', net("nbd", None, unix("/s"))),
    (
        'json:{"driver":"raw","size":7,"file":{"driver":"file","filename":"/a"}}',
        BackingLocation(kind=FILE, path="/a", format="raw", slice_offset=0, slice_size=7),
    ),
    (
        'json:{"driver":"raw","offset":-1,"file":{"driver":"file","filename":"/a"}}',
        BackingLocation(kind=FILE, path="/a", format="raw", slice_offset=2**64 - 1, slice_size=0),
    ),
    (
        'json:{"driver":"raw","file":{"driver":"nbd","host":"h"}}',
        replace(net("nbd", None, tcp("h", 10809)), format="raw"),
    ),
    (
        'json:{"server":{"1":{"type":"tcp","host":"a"},"0":{"type":"tcp","host":"b"}},'
        '"driver":"gluster","volume":"v","path":"p"}',
        net("gluster", "p", tcp("b", 24007), tcp("a", 24007), volume="v"),
    ),
    (
        'json:{"server.0.type":"tcp","server.0.host":"a","server.1":{"type":"tcp","host":"b"},'
        '"driver":"gluster","volume":"v","path":"p"}',
        net("gluster", "p", tcp("a", 24007), tcp("b", 24007), volume="v"),
    ),
    (
        'json:{"driver":"iscsi","transport":"tcp","portal":"h:99","target":"t","lun":1.50}',
        net("iscsi", "t/1.50", tcp("h", 99)),
    ),
    (
        'json:{"driver":"iscsi","transport":"tcp","portal":"[::1]","target":"t","lun":true}',
        net("iscsi", "t/0", tcp("[::1]", 3260)),
    ),
    (
        'json:{"driver":"iscsi","transport":"tcp","portal":"h","target":"t","user":5}',
        net("iscsi", "t/0", tcp("h", 3260)),
    ),
    (
        'json:{"driver":"iscsi","filename":"iscsi://u:p@h/t/1"}',
        net("iscsi", "t/1", tcp("h", 3260), inline_auth=True),
    ),
    (
        'json:{"driver":"sheepdog","filename":"sheepdog://h/vdi"}',
        net("sheepdog", "vdi", tcp("h", 7000)),
    ),
    (
        'json:{"driver":"sheepdog","vdi":"v","server":{"type":"unix","path":"/s"}}',
        net("sheepdog", "v", unix("/s")),
    ),
    ('json:{"driver":"ssh","path":"p","server":{"host":"h"}}', net("ssh", "p", tcp("h", 22))),
    (
        'json:{"driver":"vxhs","vdisk-id":"v","server":{"host":"h"}}',
        net("vxhs", "v", tcp("h", 9999)),
    ),
    ('json:{"driver":"rbd","pool":"p","image":"i"}', net("rbd", "i", volume="p")),
    (
        'json:{"driver":"rbd","pool":"p","image":"i","server":{"host":"h"}}',
        net("rbd", "i", volume="p"),
    ),
    ('json:{"driver":"rbd","filename":"p/i@s:mon_host=h"}', net("rbd", "i", tcp("h"), volume="p")),
    (
        'json:{"driver":"nfs","server":{"host":"h","port":"2049"},"user":-5,"group":2,"path":"/p"}',
        net("nfs", "/p", tcp("h", 2049)),
    ),
    (
        'json:{"driver":"ftps","url":"ftps://h/p","sslverify":"off"}',
        net("ftps", "p", tcp("h", 990)),
    ),
    (
        'json:{"driver":"ftp","url":"ftp://h/p","sslverify":"bad"}',
        net("ftp", "p", tcp("h", 21)),
    ),
    (
        'json:{"driver":"https","url":"https://h/p","cookie":" a=b; c=d=e;f="}',
        net("https", "p", tcp("h", 443)),
    ),
    ('json:{"driver":"tftp","url":"tftp://h/p"}', net("tftp", "p", tcp("h", 69))),
    ('json:{"driver":"nvme","device":"0x0:1:2.3xyz","namespace":1}', net("nvme", "0x0:1:2.3xyz")),
    ('json:{"driver":"nvme","device":"0:1:2.3","namespace":-1}', net("nvme", "0:1:2.3")),
]


@pytest.mark.parametrize(("backing", "expected"), ACCEPTED)
def test_accepted_strings_give_libvirts_location(backing: str, expected: BackingLocation) -> None:
    assert parse_backing(backing) == expected


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://h/p", 80),
        ("https://h/p", 443),
        ("ftp://h/p", 21),
        ("ftps://h/p", 990),
        ("tftp://h/p", 69),
        ("nbd://h/p", 10809),
        ("ssh://h/p", 22),
        ("iscsi://h/p", 3260),
        ("gluster://h/v/p", 24007),
        ("sheepdog://h/p", 7000),
        ("vxhs://h/p", 9999),
        ("rbd://h/p", None),
        ("nfs://h/p", None),
    ],
)
def test_default_ports_are_libvirts(url: str, port: int | None) -> None:
    # virStorageSourceNetworkDefaultPort: rbd and nfs have none.
    assert parse_backing(url).hosts[0].port == port


def test_default_ports_are_not_given_to_unix_sockets() -> None:
    assert parse_backing("nbd+unix:///?socket=/s").hosts == (unix("/s"),)


def test_a_file_name_has_no_colon_before_its_first_slash() -> None:
    assert not is_file_name("foo:bar.raw")
    assert is_file_name("./foo:bar.raw")
    assert is_file_name("a/b:c")
    assert not is_file_name("a:b/c")
    assert not is_file_name("nbd:h:1")
    assert is_file_name("/abs:x")
    assert is_file_name("")


def test_a_relative_name_is_a_file_name_not_starting_with_a_slash() -> None:
    assert is_relative("base")
    assert is_relative("../base.raw")
    assert is_relative("./foo:bar.raw")
    assert not is_relative("/abs/base")
    assert not is_relative("foo:bar.raw")
    assert not is_relative("json:{}")


def test_libvirt_resolves_a_bare_top_name_against_dot() -> None:
    assert resolve_relative_libvirt("top.qcow2", "base") == "./base"


def test_qemu_resolves_a_bare_top_name_to_the_bare_backing_name() -> None:
    assert resolve_relative_qemu("top.qcow2", "base") == "base"


def test_neither_folds_dot_dot() -> None:
    assert resolve_relative_libvirt("imgs/sub/mid2.qcow2", "../base.raw") == "imgs/sub/../base.raw"
    assert resolve_relative_qemu("imgs/sub/mid2.qcow2", "../base.raw") == "imgs/sub/../base.raw"


def test_a_top_in_the_root_directory() -> None:
    assert resolve_relative_libvirt("/top", "b") == "/b"
    assert resolve_relative_qemu("/top", "b") == "/b"


def test_libvirt_keeps_symlinked_names_as_written() -> None:
    # virstoragetest.c chain "qcow2-symlinks": link2 -> ../sub/link1 -> ../raw
    middle = resolve_relative_libvirt("images/sub/link2", "../sub/link1")
    assert middle == "images/sub/../sub/link1"
    assert resolve_relative_libvirt(middle, "../raw") == "images/sub/../sub/../raw"


def test_libvirt_takes_the_dirname_as_glib_does() -> None:
    # g_path_get_dirname drops the slashes before the last component.
    assert resolve_relative_libvirt("/a//b", "x") == "/a/x"
    assert resolve_relative_libvirt("a/", "x") == "a/x"
    assert resolve_relative_libvirt("//top", "x") == "/x"
    assert resolve_relative_libvirt("/", "x") == "/x"
    assert resolve_relative_libvirt("", "x") == "./x"


def test_qemu_keeps_the_overlay_directory_as_written() -> None:
    # Checked against qemu-img 7.2 info --output=json.
    assert resolve_relative_qemu("imgs//sub//mid2.qcow2", "../base.raw") == "imgs//sub//../base.raw"
    assert resolve_relative_qemu("imgs/o.qcow2", "./foo:bar.raw") == "imgs/./foo:bar.raw"
    assert resolve_relative_qemu("./imgs/c:olon.qcow2", "x/y") == "./imgs/x/y"


def test_qemu_keeps_absolute_and_protocol_names_verbatim() -> None:
    assert resolve_relative_qemu("imgs/abs.qcow2", "/abs/base") == "/abs/base"
    assert resolve_relative_qemu("imgs/top.qcow2", "foo:bar.raw") == "foo:bar.raw"


def test_the_file_protocol_prefix() -> None:
    # qemu opens "file:base" as the file "base"; libvirt knows no protocol "file".
    assert resolve_relative_qemu("imgs/top.qcow2", "file:base") == "file:base"
    assert not is_file_name("file:base")
    with pytest.raises(BackingNameError, match="invalid backing protocol 'file'"):
        parse_backing("file:base")
    # qemu's file driver drops the overlay's own "file:" before taking its directory.
    assert (
        resolve_relative_qemu("file:imgs/sub/mid2.qcow2", "../base.raw") == "imgs/sub/../base.raw"
    )
    assert resolve_relative_qemu("file:top.qcow2", "base") == "base"


def test_qemu_refuses_an_empty_backing_name() -> None:
    with pytest.raises(ValueError):
        resolve_relative_qemu("top.qcow2", "")


PREFIXES = ["", "json:", "json:{", 'json:{"driver":', "nbd:", "nbd:unix:", "rbd:", "fat:"]
PREFIXES += ["http://", "nbd+unix://", "gluster://h/", "iscsi://u:p@", "file:", "./"]


@given(st.builds(lambda prefix, text: prefix + text, st.sampled_from(PREFIXES), st.text()))
def test_any_text_parses_or_is_refused_with_a_backing_name_error(backing: str) -> None:
    try:
        location = parse_backing(backing)
    except BackingNameError as error:
        assert isinstance(error.message, str)
    else:
        assert isinstance(location, BackingLocation)
