"""BODY and BODYSTRUCTURE (RFC 3501 §7.4.2, formal syntax §9) as value trees.

    body-type-1part = (body-type-basic / body-type-msg / body-type-text) [SP body-ext-1part]
    body-fields     = body-fld-param SP body-fld-id SP body-fld-desc SP body-fld-enc SP
                      body-fld-octets
    body-type-text  = media-text SP body-fields SP body-fld-lines
    body-type-msg   = media-message SP body-fields SP envelope SP body SP body-fld-lines
    body-ext-1part  = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc ...]]]
    body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
    body-ext-mpart  = body-fld-param [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc ...]]]

BODY is BODYSTRUCTURE without the extension data. Type, subtype and parameters are given as
written in the message (as Dovecot does); what is missing gets the RFC 2045 defaults.
"""

from __future__ import annotations

from mailkeep.proto.imap.envelope import envelope, nstring
from mailkeep.proto.imap.mime import MimePart, Params
from mailkeep.proto.imap.values import Value

# RFC 2045 §6.1: "Content-Transfer-Encoding: 7BIT" is assumed when the field is absent.
DEFAULT_ENCODING = "7bit"
DEFAULT_CHARSET = ("charset", "us-ascii")  # RFC 2045 §5.2 / RFC 2046 §4.1.2


def bodystructure(part: MimePart) -> Value:
    """FETCH BODYSTRUCTURE of a message (pass the top-level part)."""
    return _body(part, extended=True)


def body(part: MimePart) -> Value:
    """FETCH BODY (the non-extensible form) of a message."""
    return _body(part, extended=False)


def _params_value(params: Params) -> Value:
    # body-fld-param = "(" string SP string *(SP string SP string) ")" / nil
    if not params:
        return None
    out: list[Value] = []
    for name, value in params:
        out.append(nstring(name) or "")
        out.append(nstring(value) or "")
    return out


def _disposition_value(part: MimePart) -> Value:
    # body-fld-dsp = "(" string SP body-fld-param ")" / nil
    if part.disposition is None:
        return None
    kind, params = part.disposition
    return [nstring(kind), _params_value(params)]


def _language_value(part: MimePart) -> Value:
    # body-fld-lang = nstring / "(" string *(SP string) ")"
    if not part.language:
        return None
    if len(part.language) == 1:
        return nstring(part.language[0])
    return [nstring(lang) for lang in part.language]


def _body(part: MimePart, *, extended: bool) -> Value:
    # Iterative over depth would be nicer, but depth is bounded by mime.MAX_DEPTH.
    if part.is_multipart:
        return _multipart(part, extended=extended)
    return _single(part, extended=extended)


def _multipart(part: MimePart, *, extended: bool) -> Value:
    if part.children:
        out: list[Value] = [_body(child, extended=extended) for child in part.children]
    else:
        # RFC 3501 §9 needs 1*body; a multipart with no parts gets one empty text/plain,
        # as Dovecot does.
        empty: list[Value] = ["text", "plain", list(DEFAULT_CHARSET), None, None,
                              DEFAULT_ENCODING, 0, 0]
        if extended:
            empty += [None, None, None, None]
        out = [empty]
    out.append(nstring(part.media_subtype))
    if extended:
        out += [
            _params_value(part.params),
            _disposition_value(part),
            _language_value(part),
            nstring(part.location),
        ]
    return out


def _single(part: MimePart, *, extended: bool) -> Value:
    params = part.params
    is_text = part.media_type.lower() == "text"
    if is_text and not any(name.lower() == "charset" for name, _v in params):
        params = (*params, DEFAULT_CHARSET)
    out: list[Value] = [
        nstring(part.media_type),
        nstring(part.media_subtype),
        _params_value(params),
        nstring(part.content_id),
        nstring(part.description),
        nstring(part.encoding) if part.encoding else DEFAULT_ENCODING,
        part.size,
    ]
    if part.message is not None:
        out += [envelope(part.message), _body(part.message, extended=extended), part.lines]
    elif is_text:
        out.append(part.lines)
    if extended:
        out += [
            nstring(part.md5),
            _disposition_value(part),
            _language_value(part),
            nstring(part.location),
        ]
    return out
