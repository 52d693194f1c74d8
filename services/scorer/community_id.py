"""Community ID v1 of a connection's 5-tuple: the flow hash Zeek (community-id package), Suricata
and SIEMs put on every record, so an analyst pivots from a headbits alert to the same flow there.

The `communityid` package (Corelight's reference implementation of the published spec) does the
hashing; this module only maps headbits' transport names onto it. Seed 0 is the spec's default
and what the other tools use unless configured otherwise.
"""

from __future__ import annotations

import functools
import logging

import communityid
from communityid.error import FlowTupleError

# The package traces every hash it computes (seven lines) at INFO: at a service's usual log level
# that is most of the scorer's log and of its time. Its warnings still come through.
logging.getLogger(communityid.__name__).setLevel(logging.WARNING)

_MAKERS = {"tcp": communityid.FlowTuple.make_tcp, "udp": communityid.FlowTuple.make_udp}


@functools.cache
def _hasher(seed: int) -> communityid.CommunityID:
    return communityid.CommunityID(seed)


def community_id(orig_h: str, orig_p: int, resp_h: str, resp_p: int, transport: str,
                 seed: int = 0) -> str:
    """"1:<base64 SHA-1>" of the flow, the same whichever end is given first; "" for a transport
    the spec does not hash by ports (headbits sees only tcp and udp) or an unparsable address."""
    maker = _MAKERS.get(transport)
    if maker is None:
        return ""
    try:
        return _hasher(seed).calc(maker(orig_h, resp_h, orig_p, resp_p))
    except (ValueError, FlowTupleError):
        return ""
