"""components/tracking/credentials.py: one set of rules hides credentials wherever trainwise writes or prints."""

import http.server
import threading

import pytest

from trainwise.components.tracking.credentials import MASK, mask_secrets, mask_value, strip_credentials, url_credentials


def test_a_password_holding_at_is_masked_up_to_the_host():
    assert mask_value("https://u:p@ss@host/data.tar.gz") == f"https://{MASK}@host/data.tar.gz"
    assert mask_value("fetch http://bob:s3cr@t@10.0.0.1:8080/x failed") == f"fetch http://{MASK}@10.0.0.1:8080/x failed"
    # an `@` after the host is not userinfo
    assert mask_value("http://host/a?mail=me@x.org") == "http://host/a?mail=me@x.org"


def test_credential_options_inside_a_value_are_masked():
    assert mask_value("--password=hunter2 --lr=0.1") == f"--password={MASK} --lr=0.1"
    assert mask_value("run.sh --password hunter2 --epochs 3") == f"run.sh --password {MASK} --epochs 3"
    assert mask_value("host=db user=bob password='pa ss' port=5432") == f"host=db user=bob password={MASK} port=5432"
    assert mask_value('{"api_key": "abc123", "max_tokens": 64}') == f'{{"api_key": {MASK}, "max_tokens": 64}}'
    assert mask_value("RAY_AUTH_TOKEN=abc python x.py") == f"RAY_AUTH_TOKEN={MASK} python x.py"
    assert mask_value("Authorization: Basic dXNlcjpwYXNzd29yZA==") == f"Authorization: {MASK}"
    # ordinary options keep their values: they are what runs are compared by
    assert mask_value("--max_tokens=64 --sort_key id --pad_token 0") == "--max_tokens=64 --sort_key id --pad_token 0"


def test_environment_tags_mask_options_inside_values():
    from trainwise.components.tracking.mlflow_runs import environment_tags

    tags = environment_tags({"TRAINWISE_EXTRA_ARGS": "--password=hunter2 --epochs 3", "HOME": "/root"})
    assert tags == {"env.TRAINWISE_EXTRA_ARGS": f"--password={MASK} --epochs 3"}


def test_masking_is_one_function_everywhere():
    from trainwise.components.tracking import mlflow_runs, tracker

    assert mlflow_runs.mask_value is mask_value and mlflow_runs.mask_secrets is mask_secrets
    assert tracker._safe_uri("https://u:p@ss@host") == f"https://{MASK}@host"


@pytest.mark.parametrize("url, what", [
    ("http://user:password@host/data.tar.gz", "a user name and password"),
    ("https://u:p@ss@host/x.zip", "a user name and password"),
    ("https://ghp_TOKEN@github.com/x.zip", "a user name (or token) before the host"),
    ("s3://bucket/x.csv?X-Amz-Signature=abc", "the query parameter `X-Amz-Signature`"),
    ("https://acct.blob.core.windows.net/c/x.zip?sv=1&sig=abc", "the query parameter `sig`"),
    ("https://host/x.zip?access_token=abc", "the query parameter `access_token`"),
    ("sftp://alice@host/data", None),  # an account name, not a secret
    ("s3://bucket/pets.tar.gz", None),
    ("data/raw/pets", None),
    ("/abs/dir@2x", None),
])
def test_url_credentials(url, what):
    assert url_credentials(url) == what


def test_strip_credentials_cuts_to_the_last_at():
    assert strip_credentials("https://u:p@ss@host:8443/a?b=1") == ("https://host:8443/a?b=1", "u", "p@ss")
    assert strip_credentials("http://host/x") == ("http://host/x", None, None)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_a_tracking_uri_with_user_and_password_passes_the_pre_flight_check():
    """MLflow sends a URI's user:password as basic auth; the pre-flight check called such a
    running server unreachable (urllib took `user:pass@host` for the host name)."""
    from trainwise.components.tracking.tracker import TrackingUnavailable, check_reachable

    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        check_reachable(f"http://bob:p@ss@127.0.0.1:{port}")  # raised TrackingUnavailable before
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(TrackingUnavailable) as err:
        check_reachable(f"http://bob:hunter2@127.0.0.1:{port}", timeout_s=2)
    assert "hunter2" not in str(err.value) and f"http://{MASK}@127.0.0.1:{port}" in str(err.value)
