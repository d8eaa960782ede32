"""SMART Backend Services with an independent OAuth library (Authlib's RFC 7523
`private_key_jwt` client authentication) against a running demo gateway (manual check):

    pip install authlib requests
    python tests/clients/backend_services.py http://127.0.0.1:8080/ina/fhir

It discovers the token endpoint from .well-known/smart-configuration, authenticates as the
demo's backend-services client `demo-ehr-ina` with its RS384 demo key, obtains a token with
`system/*.rs`, and reads the hospital's Organization with it.
"""
import pathlib
import sys
import time

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT

base = sys.argv[1].rstrip("/")
key = (pathlib.Path(__file__).resolve().parents[2] / "demo" / "keys" / "ehr-ina-rs384.pem").read_text()
configuration = requests.get(f"{base}/.well-known/smart-configuration", timeout=10).json()
token_url = configuration["token_endpoint"]
assert "client-confidential-asymmetric" in configuration["capabilities"], configuration

session = OAuth2Session(
    "demo-ehr-ina",
    key,
    # SMART allows at most five minutes of assertion lifetime (Authlib's default is an hour).
    token_endpoint_auth_method=PrivateKeyJWT(
        token_url, alg="RS384", headers={"kid": "ehr-ina-rs384"}, claims={"exp": int(time.time()) + 240}
    ),
    scope="system/*.rs",
)
token = session.fetch_token(token_url, grant_type="client_credentials")
assert token["token_type"].lower() == "bearer" and token["scope"] == "system/*.rs", token
hospital = session.get(f"{base}/Organization/demo-ina-central-hospital", timeout=10)
hospital.raise_for_status()
print(f"Authlib private_key_jwt (RS384): backend-services token OK, expires_in {token['expires_in']}; read {hospital.json()['name']}")
