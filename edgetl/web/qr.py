"""A QR code of a URL, drawn with text for the terminal (the `qrcode` package), so a phone's
camera can open the page; None when the package is missing (the URL is printed anyway)."""
from __future__ import annotations

import io


def terminal_qr(text: str) -> str | None:
    try:
        import qrcode
    except ImportError:
        return None
    q = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    q.add_data(text)
    q.make(fit=True)
    buf = io.StringIO()
    q.print_ascii(out=buf, invert=True)  # half blocks: dark modules on a light terminal background and vice versa
    return buf.getvalue()
