"""Languages of the desk: gettext catalogs through Babel, Bahasa Indonesia by default.

Source strings (msgids) are English; ``locale/id/LC_MESSAGES/messages.po`` holds the Indonesian
translations and English needs no catalog. The ``.po`` files are the only thing committed: they
are compiled in memory when first used (Babel's ``read_po`` + ``write_mo``, a few milliseconds),
so there is no build step and no binary ``.mo`` that could go stale beside its ``.po``.

Extract after changing strings (``babel.cfg`` at the repository root)::

    pybabel extract -F babel.cfg -o central_sync/web/locale/messages.pot central_sync/web
    pybabel update -i central_sync/web/locale/messages.pot -d central_sync/web/locale -l id

Each request's language is chosen by ``?lang=id|en`` (remembered in the ``lang`` cookie), then
the cookie, then the configured default; it lives in a context variable for the request.
"""

from __future__ import annotations

import contextvars
import functools
import io
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from jinja2 import Environment

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES: dict[str, str] = {"id": "Bahasa Indonesia", "en": "English"}
DEFAULT = "id"
COOKIE = "lang"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("desk_language", default=DEFAULT)


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"


@functools.cache
def translations(lang: str) -> NullTranslations:
    """The compiled catalog of ``lang`` (English and unknown languages: the msgids)."""
    path = po_path(lang)
    if lang == "en" or not path.exists():
        return NullTranslations()
    with path.open("rb") as f:
        catalog = read_po(f, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return Translations(fp=buf)


def current() -> str:
    return _current.get()


def set_language(lang: str) -> contextvars.Token[str]:
    return _current.set(lang if lang in LANGUAGES else DEFAULT)


def reset_language(token: contextvars.Token[str]) -> None:
    _current.reset(token)


def gettext(message: str) -> str:
    return translations(_current.get()).ugettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_current.get()).ungettext(singular, plural, n)


#: The conventional alias, so ``_("...")`` is found by ``pybabel extract``.
_ = gettext


def install(env: Environment) -> None:
    """``{% trans %}`` and ``_()`` in templates, translated into the request's language."""
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(gettext, ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.globals["current_language"] = current
    env.globals["languages"] = LANGUAGES


def choose(query_lang: str | None, cookie_lang: str | None, default: str) -> str:
    for candidate in (query_lang, cookie_lang, default):
        if candidate in LANGUAGES:
            return str(candidate)
    return DEFAULT


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class LanguageMiddleware:
    """Pure ASGI middleware: picks the request's language and remembers ``?lang=`` in a cookie.

    Pure ASGI (not ``BaseHTTPMiddleware``) so the context variable is set in the task that runs
    the endpoint; Starlette copies the context into its thread pool for sync endpoints.
    """

    def __init__(self, app: ASGIApp, default: str = DEFAULT, secure: bool = False) -> None:
        self.app, self.default, self.secure = app, default, secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        asked = (query.get("lang") or [None])[0]
        cookie_lang = None
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # a malformed cookie header is the browser's problem
                    continue
                if COOKIE in jar:
                    cookie_lang = jar[COOKIE].value
        lang = choose(asked, cookie_lang, self.default)
        scope.setdefault("state", {})["language"] = lang
        token = set_language(lang)
        remember = asked in LANGUAGES and asked != cookie_lang

        async def send_with_cookie(message: MutableMapping[str, Any]) -> None:
            if remember and message["type"] == "http.response.start":
                flags = "; Secure" if self.secure else ""
                cookie = f"{COOKIE}={lang}; Path=/; Max-Age=31536000; SameSite=Lax{flags}"
                message["headers"] = [*message.get("headers", []),
                                      (b"set-cookie", cookie.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_cookie)
        finally:
            _current.reset(token)
