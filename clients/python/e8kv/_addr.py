"""The address rule of e8kvd and its clients, for e8kv.Client (the same rule and messages as
proto/e8kv_addr.c, which e8kvd --listen, libe8kv and e8kvctl use; tests/clients/addr_cases.txt
is the table all of them are tested on).

Taken: ``host:port`` (host of [A-Za-z0-9._-], port 0..65535), ``[v6]:port``, ``unix:PATH``,
``unix:///abs/path``. Anything else raises ValueError before gRPC sees it, so a typo fails at
once with its reason instead of an obscure gRPC error or a wait later.
"""
import re

FORMS = "use host:port (TCP, IPv6 as [::1]:port) or unix:/path/to.sock"
UNIX_PATH_MAX = 107        # bytes: sun_path less its NUL
_HOST = re.compile(r"[A-Za-z0-9._-]*")
_V6 = re.compile(r"[0-9A-Fa-f:.]*")


def _why(address):
    """The reason address is refused (without the forms), or None when it is taken."""
    a = address
    if not a:
        return "empty address"
    for i, ch in enumerate(a):
        if 0xd800 <= ord(ch) <= 0xdfff:     # no bytes to give gRPC (or the C rule)
            return f"has a lone surrogate (U+{ord(ch):04X}) at character {i}, not UTF-8 text"
        if ord(ch) < 0x20 or ord(ch) == 0x7f:
            return f"has a control character at byte {len(a[:i].encode())}"
    if a.startswith("unix:"):
        path = a[5:]
        if path.startswith("//"):
            if not path.startswith("///"):
                return ("unix://NAME names a host, not a socket path (an absolute path in URI "
                        "form takes three slashes, unix:///path)")
            path = path[2:]
        if not path:
            return "no socket path after unix:"
        odd = next((ch for ch in path if ch in "%,"), None)
        if odd is not None:
            what = "a %XX escape" if odd == "%" else "a list of sockets"
            return f"the socket path has '{odd}', which gRPC reads as {what}"
        n = len(path.encode())
        if n > UNIX_PATH_MAX:
            return f"the socket path is {n} bytes; a unix socket takes at most {UNIX_PATH_MAX}"
        return None
    if "://" in a:
        return "URL schemes are not taken"
    if a[0] in "/.~":
        return "has no port (a socket path is written unix:PATH)"
    if " " in a:
        return "has a space"
    if a[0] == "[":
        close = a.find("]")
        if close < 0:
            return "has '[' but no ']'"
        if close == 1:
            return "has no host between [ and ]"
        if a[close + 1:close + 2] != ":":
            return "has no port after ]"
        ok = _V6.match(a, 1).end()   # hex, ':', '.', then maybe a %zone (fe80::1%eth0)
        if a[ok] == "%" and ok + 1 < close:
            ok = _HOST.match(a, ok + 1).end()
        if ok != close:
            b = a[ok].encode()[0]
            what = f"'{a[ok]}'" if 0x20 < b < 0x7f else f"byte 0x{b:02x}"
            return f"the IPv6 address has {what}, which no IPv6 address has"
        port = a[close + 2:]
    else:
        colon = a.rfind(":")
        if colon < 0:
            return "has no port"
        if colon == 0:
            return "has no host"
        if ":" in a[:colon]:
            return "an IPv6 address is written in brackets, [v6]:port"
        ok = _HOST.match(a).end()
        if ok != colon:
            b = a[ok].encode()[0]
            what = f"'{a[ok]}'" if 0x20 < b < 0x7f else f"byte 0x{b:02x}"
            return f"the host has {what}, which no host name has"
        port = a[colon + 1:]
    if not port:
        return "has no port"
    if not (port.isascii() and port.isdigit()):
        return f'the port "{port}" is not a number'
    if len(port) > 5 or int(port) > 65535:
        return f"the port {port} is out of range (0..65535)"
    return None


def check_address(address):
    """Raises ValueError (TypeError for a non-str) naming the reason and the forms when e8kvd
    could not be at ``address``; returns the address otherwise."""
    if not isinstance(address, str):
        raise TypeError(f"e8kv address must be a str, not {type(address).__name__}")
    why = _why(address)
    if why is not None:
        raise ValueError(f'address "{address}": {why}: {FORMS}')
    return address
