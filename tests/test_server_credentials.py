"""Credentials on the extension's routes, with a client that keeps cookies (as httpx and langchain-openai do):
a wrong key in the Authorization header is a 401 even beside a valid Jupyter login cookie, a client using
its key gets no login cookie, and the browser's cookie login still works."""

from __future__ import annotations

import requests

from .conftest import SMOLLM, TOKEN

CHAT = {"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_a_client_with_its_key_gets_no_login_cookie(server):
    with requests.Session() as client:
        ok = client.get(server.url + "universal/v1/models", headers=bearer(TOKEN), timeout=30)
        assert ok.status_code == 200
        assert "Set-Cookie" not in ok.headers and not client.cookies
        ok = client.post(server.url + "universal/v1/chat/completions", json=CHAT, headers=bearer(TOKEN), timeout=120)
        assert ok.status_code == 200 and not client.cookies


def test_a_wrong_key_is_refused_even_with_a_login_cookie(server):
    with requests.Session() as browser_like:
        # a login as Jupyter gives one: the token in the URL of a page sets the login cookie
        page = browser_like.get(server.url + "api/status", params={"token": TOKEN}, timeout=30)
        assert page.status_code == 200 and browser_like.cookies, "Jupyter set no login cookie"
        # the cookie alone still logs the browser in on these routes (a GET needs no _xsrf)
        assert browser_like.get(server.url + "universal/v1/models", timeout=30).status_code == 200
        for method, path, body in (("GET", "universal/v1/models", None),
                                   ("POST", "universal/v1/chat/completions", CHAT),
                                   ("GET", "universal/api/status", None)):
            wrong = browser_like.request(method, server.url + path, json=body, headers=bearer("not-the-token"),
                                         timeout=30)
            assert wrong.status_code == 401, (path, wrong.status_code, wrong.text[:200])
            error = wrong.json()["error"]
            assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
            assert wrong.headers.get("WWW-Authenticate", "").startswith("Bearer")
        # the right key beside the cookie works
        right = browser_like.post(server.url + "universal/v1/chat/completions", json=CHAT, headers=bearer(TOKEN),
                                  timeout=120)
        assert right.status_code == 200


def test_the_token_scheme_of_jupyter_works_too(server):
    response = requests.get(server.url + "universal/v1/models", headers={"Authorization": f"token {TOKEN}"},
                            timeout=30)
    assert response.status_code == 200
