"""What a real population varies in what it asks: host names, user agents, users, paths.

Everything is drawn from the `random.Random` a caller passes, so a seed reproduces the plan.
"""

from __future__ import annotations

import random

_LABELS = (
    "www", "api", "cdn", "mail", "static", "login", "auth", "img", "app", "m", "shop", "news",
    "docs", "files", "update", "telemetry", "portal", "vpn", "git", "wiki", "edge", "assets",
)
_WORDS = (
    "example", "acme", "contoso", "northwind", "globex", "initech", "umbrella", "hooli",
    "stark", "wayne", "tyrell", "cyberdyne", "soylent", "vandelay", "wonka", "aperture",
    "blackmesa", "gringotts", "oscorp", "massive", "dynamic", "pied-piper", "prestige",
)
_TLDS = ("com", "net", "org", "io", "de", "co.uk", "fr", "info", "cloud", "dev", "app", "nl")

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "curl/8.5.0",
    "Wget/1.21.4",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "Microsoft-CryptoAPI/10.0",
    "Debian APT-HTTP/1.3 (2.6.1)",
)
_USERS = (
    "alice", "bob", "carol", "dave", "eve", "mallory", "admin", "backup", "deploy", "ops",
    "jenkins", "www-data", "anonymous", "ftpuser", "svc-report", "j.smith", "m.garcia",
)
_PATH_PARTS = (
    "index.html", "api", "v1", "v2", "users", "login", "static", "js", "css", "app.js",
    "style.css", "images", "logo.png", "search", "status", "health", "favicon.ico", "feed",
    "items", "orders", "cart", "downloads", "update", "metrics", "robots.txt", "wp-admin",
)


def host_name(rng: random.Random) -> str:
    return f"{rng.choice(_LABELS)}.{rng.choice(_WORDS)}.{rng.choice(_TLDS)}"


def domain(rng: random.Random) -> str:
    return f"{rng.choice(_WORDS)}.{rng.choice(_TLDS)}"


def user_name(rng: random.Random) -> str:
    name = rng.choice(_USERS)
    return f"{name}{rng.randint(1, 99)}" if rng.random() < 0.3 else name


def url_path(rng: random.Random) -> str:
    parts = [rng.choice(_PATH_PARTS) for _ in range(rng.randint(0, 3))]
    path = "/" + "/".join(parts)
    if rng.random() < 0.3:
        path += f"?id={rng.randint(1, 99999)}&lang={rng.choice(('en', 'de', 'fr', 'es'))}"
    return path


def sample_ordered(rng: random.Random, pool: tuple[str, ...], at_least: int = 1) -> tuple[str, ...]:
    """A random non-empty subset of pool in random order: how real clients differ in offers."""
    count = rng.randint(min(at_least, len(pool)), len(pool))
    return tuple(rng.sample(pool, count))
