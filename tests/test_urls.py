"""Uploads from URLs: a real HTTP server on loopback streaming into the emulator's S3."""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from aws_extension.core.aws import Aws
from aws_extension.core.bootstrap import setup
from aws_extension.core.config import Settings
from aws_extension.core.errors import Refused
from aws_extension.core.models import catalog, transfer, urls
from aws_extension.core.models.urls import upload_urls
from faultproxy import fail_part, s3_error
from model_headers import KINDS, safetensors_bytes, state_dict, torch_zip_bytes

MiB = 1024 * 1024
BIG = random.Random(7).randbytes(24 * MiB + 12345)  # 4 parts of 8 MiB
SMALL = random.Random(8).randbytes(300_000)
FILES = {"big.safetensors": BIG, "small.safetensors": SMALL}
SENT = 20 * MiB + 777  # what /claim/ sends whatever it claims
ETAG = '"v1"'


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers))  # headers: case-insensitive
        path = self.path.split("?", 1)[0]
        kind, _, rest = path.strip("/").partition("/")
        name = rest.rsplit("/", 1)[-1]
        data = FILES.get(name, SMALL)
        if kind == "f":
            return self.send_file(data) if name in FILES else self.send_error(404, "Not Found")
        if kind == "cd":  # a download link whose name only the header tells
            cd = "attachment; filename=\"fallback.safetensors\"; filename*=UTF-8''" + quote("my modèle.safetensors")
            return self.send_file(SMALL, {"Content-Disposition": cd})
        if kind == "cdplain":
            return self.send_file(SMALL, {"Content-Disposition": 'attachment; filename="plain.ckpt"'})
        if kind == "redirect":  # /redirect/<n>/<name>: n hops, relative then absolute
            hops = int(rest.split("/")[0])
            host = self.headers["Host"]
            to = f"/redirect/{hops - 1}/{name}" if hops > 1 else f"http://{host}/f/{name}"
            return self.send_status(302, {"Location": to})
        if kind == "meta":
            return self.send_status(302, {"Location": "http://169.254.169.254/latest/meta-data/iam"})
        if kind == "html":
            return self.send_file(b"<html><body>Sign in</body></html>", {"Content-Type": "text/html; charset=utf-8"})
        if kind == "sniff":
            return self.send_file(b"\n  <!DOCTYPE html><html><body>Sign in</body></html>")
        if kind == "empty":
            return self.send_file(b"")
        if kind == "cut":  # the first GET stops midway; a Range GET gets the rest
            return self.send_file(data, cut=not self.headers.get("Range"))
        if kind == "cutnorange":
            return self.send_file(data, cut=True, ranges=False)
        if kind == "claim":  # /claim/<bytes>/<name>: claims that length, sends 20 MiB and change, hangs up
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", rest.split("/")[0])
            self.end_headers()
            self.wfile.write(BIG[:SENT])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return None
        if kind == "chunked":
            return self.send_chunked(data)
        if kind == "close":  # no length: the end of the body is the end of the connection
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
            return None
        return self.send_error(404, "Not Found")

    def send_status(self, status, headers):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_file(self, data, headers=None, cut=False, ranges=True):
        start, status = 0, 200
        wanted = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if ranges and wanted and self.headers.get("If-Range", ETAG) == ETAG:
            start, status = int(wanted.group(1)), 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if ranges:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", ETAG)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if cut:
            self.wfile.write(body[: len(body) // 2 + 777])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.wfile.write(body)

    def send_chunked(self, data):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(data), MiB):
            piece = data[i:i + MiB]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that stops reading is expected here
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def http_server():
    server = Server(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def site(http_server):
    http_server.requests.clear()
    base = f"http://127.0.0.1:{http_server.server_address[1]}"
    http_server.url = lambda path: base + path
    return http_server


def s3_bytes(aws, key):
    return aws.client("s3").get_object(Bucket=aws.bucket, Key=key)["Body"].read()


def nothing_left(aws):
    s3 = aws.client("s3")
    objects = s3.list_objects_v2(Bucket=aws.bucket, Prefix="models/").get("Contents", [])
    return not objects and not s3.list_multipart_uploads(Bucket=aws.bucket).get("Uploads", [])


def upload(aws, *items, **kw):
    kw.setdefault("allow_private", True)
    return upload_urls(aws, "lora", list(items), **kw)


# -- end to end ----------------------------------------------------------------------------------------
def test_multipart_file_lands_identical_with_description(aws, site):
    seen = []
    url = site.url("/f/big.safetensors")
    [result] = upload(aws, url, description='{"author": "me", "base": "SD 1.5"}', progress=seen.append)
    assert result.status == "uploaded", result.error
    assert result.parts_sent == 4 and result.size == len(BIG)
    assert result.sha256 == hashlib.sha256(BIG).hexdigest()
    assert s3_bytes(aws, "models/Lora/big.safetensors") == BIG
    shown = catalog.show_model(aws, "lora", "big.safetensors")
    assert shown.sha256 == result.sha256 and shown.description == {"author": "me", "base": "SD 1.5"}
    assert shown.source == url
    assert {p.item for p in seen} == {url} and seen[-1].state == "done"


def test_name_from_content_disposition(aws, site):
    results = upload(aws, site.url("/cd/download"), site.url("/cdplain/get?id=3"))
    assert [r.name for r in results] == ["my modèle.safetensors", "plain.ckpt"]
    assert s3_bytes(aws, "models/Lora/my modèle.safetensors") == SMALL


def test_redirects_followed_and_bounded(aws, site):
    ok, too_many = upload(aws, site.url("/redirect/3/small.safetensors"), site.url("/redirect/6/small.safetensors"))
    assert ok.status == "uploaded" and ok.name == "small.safetensors"
    assert s3_bytes(aws, "models/Lora/small.safetensors") == SMALL
    assert too_many.status == "failed" and "more than 5 redirects" in too_many.error


def test_cut_connection_resumes_with_range(aws, site):
    [result] = upload(aws, site.url("/cut/big.safetensors"))
    assert result.status == "uploaded", result.error
    assert s3_bytes(aws, "models/Lora/big.safetensors") == BIG
    resumed = [h for _, h in site.requests if "Range" in h]
    assert len(resumed) == 1 and resumed[0]["If-Range"] == ETAG
    assert int(resumed[0]["Range"][6:-1]) >= 8 * MiB  # it continued the stream, not a fresh start


def test_cut_without_ranges_fails_clearly_and_leaves_nothing(aws, site):
    [result] = upload(aws, site.url("/cutnorange/big.safetensors"))
    assert result.status == "failed" and "does not allow resuming" in result.error
    assert nothing_left(aws)


@pytest.mark.parametrize("kind", ["chunked", "close"])
def test_no_content_length(aws, site, kind):
    [result] = upload(aws, site.url(f"/{kind}/big.safetensors"))
    assert result.status == "uploaded", result.error
    assert s3_bytes(aws, "models/Lora/big.safetensors") == BIG


@pytest.mark.parametrize("path", ["/html/model.safetensors", "/sniff/model.safetensors"])
def test_html_page_refused(aws, site, path):
    [result] = upload(aws, site.url(path))
    assert result.status == "failed" and "returned an HTML page, not a model file" in result.error
    assert nothing_left(aws)


def test_empty_body_refused_leaving_nothing(aws, site):
    [result] = upload(aws, site.url("/empty/model.safetensors"))
    assert result.status == "failed" and "empty" in result.error
    assert nothing_left(aws)


def test_not_a_model_name_refused(aws, site):
    [result] = upload(aws, site.url("/chunked/archive.zip"))
    assert result.status == "failed" and "archive.zip" in result.error and "not a model file" in result.error


def test_404_names_the_status(aws, site):
    [result] = upload(aws, site.url("/f/nope.safetensors"))
    assert result.status == "failed" and "HTTP 404" in result.error


@pytest.mark.parametrize("bad", ["[1, 2]", "not json", '"text"', 42])
def test_bad_description_refused_before_any_request(aws, site, bad):
    with pytest.raises(Refused, match="Models Description must be a JSON object"):
        upload(aws, site.url("/f/small.safetensors"), description=bad)
    assert site.requests == []


def test_loopback_refused_unless_allowed(aws, site):
    [result] = upload_urls(aws, "lora", site.url("/f/small.safetensors"))  # the settings' default: off
    assert result.status == "failed" and "loopback" in result.error
    [result] = upload(aws, site.url("/f/small.safetensors"), allow_private=False)
    assert result.status == "failed" and site.requests == []


def test_metadata_refused_even_when_private_allowed(aws, site):
    direct, redirected = upload(aws, "http://169.254.169.254/latest/meta-data/", site.url("/meta/x"))
    assert direct.status == redirected.status == "failed"
    assert "cloud metadata" in direct.error and "cloud metadata" in redirected.error
    assert [p for p, _ in site.requests] == ["/meta/x"]


def test_the_same_url_again_is_skipped_when_the_server_vouches_for_the_file(aws, site):
    url = site.url("/f/small.safetensors?token=T")
    [first] = upload(aws, url)
    assert first.status == "uploaded"
    site.requests.clear()
    [again] = upload(aws, url)  # same URL, same strong ETag, same size: the cloud has it
    assert (again.status, again.sha256, again.size) == ("skipped", first.sha256, len(SMALL))
    assert len(site.requests) == 1  # one GET, its body left unread
    # a file with no ETag proves nothing: it is fetched again
    [chunked] = upload(aws, site.url("/chunked/small.safetensors"))
    assert chunked.status == "uploaded"
    assert upload(aws, site.url("/chunked/small.safetensors"))[0].status == "uploaded"


def test_only_http_and_https(aws, site):
    [result] = upload(aws, "ftp://127.0.0.1/model.safetensors")
    assert result.status == "failed" and "only http:// and https://" in result.error
    # the message names the URL as typed, scheme and all: "/etc/passwd: only http://..." read as a path problem
    [result] = upload(aws, "file:///etc/passwd")
    assert result.status == "failed" and result.error.startswith("file:///etc/passwd: only http:// and https://")


def test_batch_each_url_on_its_own(aws, site):
    text = f"{site.url('/f/small.safetensors')} , {site.url('/f/gone.safetensors')}"
    good, bad = upload_urls(aws, "lora", text, allow_private=True)
    assert good.status == "uploaded" and bad.status == "failed" and bad.item.endswith("/f/gone.safetensors")


def test_tokens_never_shown(aws, site):
    seen = []
    port = site.server_address[1]
    batch = [f"http://alice:hunter2@127.0.0.1:{port}/f/small.safetensors?token=SECRET",
             site.url("/f/gone.safetensors?token=SECRET"), site.url("/redirect/2/big.safetensors?sig=SECRET")]
    results = upload(aws, *batch, progress=seen.append)
    assert [r.status for r in results] == ["uploaded", "failed", "uploaded"]
    record = s3_bytes(aws, "records/Lora/small.safetensors.json").decode()
    shown = json.dumps([r.dict() for r in results]) + record + repr(seen)
    assert "SECRET" not in shown and "hunter2" not in shown and "alice" not in shown
    assert f"127.0.0.1:{port}/f/small.safetensors?..." in shown
    first_path, first_headers = site.requests[0]
    assert first_path.endswith("?token=SECRET") and first_headers["Authorization"].startswith("Basic ")


def test_connects_to_the_checked_address_with_the_host_header(aws, site, monkeypatch):
    port, lookups, real = site.server_address[1], [], socket.getaddrinfo

    def fake(host, *args, **kw):  # the first address refuses connections: the next one is tried
        if host != "models.example":  # boto3's own lookups
            return real(host, *args, **kw)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("127.0.0.2", "127.0.0.1")]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    [result] = upload(aws, f"http://models.example:{port}/f/small.safetensors")
    assert result.status == "uploaded", result.error
    assert lookups == ["models.example"]
    assert site.requests[0][1]["Host"] == f"models.example:{port}"


def test_closed_port_cannot_connect(aws, site):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    [result] = upload(aws, f"http://127.0.0.1:{port}/m.safetensors?token=SECRET")
    assert result.status == "failed" and "cannot connect" in result.error and "SECRET" not in result.error


def test_https_checks_the_certificate_against_the_url_host(aws, site, tmp_path, monkeypatch):
    """Connected by address, the certificate must still match the URL's host name."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = Server(("127.0.0.1", 0), Handler)
    server.requests = []
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        [untrusted] = upload(aws, f"https://localhost:{port}/f/small.safetensors")
        monkeypatch.setattr(urls, "get_cert_path", lambda _: str(tmp_path / "cert.pem"))
        trusted, wrong_name = upload(aws, f"https://localhost:{port}/f/small.safetensors",
                                     f"https://127.0.0.1:{port}/f/small.safetensors")
    finally:
        server.shutdown()
        server.server_close()
    assert untrusted.status == "failed" and "TLS certificate check failed" in untrusted.error
    assert trusted.status == "uploaded", trusted.error
    assert wrong_name.status == "failed" and "TLS certificate check failed" in wrong_name.error


# -- sizes a server claims, and S3 answers ------------------------------------------------------------
def test_a_claimed_size_no_upload_can_hold_is_refused_before_anything_is_written(aws, site):
    [result] = upload(aws, site.url("/claim/100000000000000/huge.safetensors?token=SECRET"))
    assert result.status == "failed" and "SECRET" not in result.error
    assert result.error.startswith(site.url("/claim/100000000000000/huge.safetensors?..."))
    assert "the server says the file is 100,000,000,000,000 bytes, more than one upload can hold" in result.error
    assert "nothing was uploaded" in result.error
    assert nothing_left(aws)


@pytest.mark.parametrize("claim", [30_000_000_000, 4_000_000_000_000])
def test_memory_stays_bounded_whatever_size_is_claimed(claim):
    """The parts held at once (in flight plus the one being read) for what a server claims, up to the limit."""
    part = transfer.part_size_for(claim)
    held = transfer.parts_held(part, 8)
    assert 5 * MiB <= part <= transfer.MAX_BUFFERED_PART and claim <= part * transfer.MAX_PARTS
    assert held * part <= max(transfer.BUFFER_BUDGET, part) <= 512 * MiB
    assert transfer.MAX_UPLOAD >= 5 * 10**12 and transfer.MAX_BUFFERED_PART <= 5 * 1024**3


def test_a_broken_download_names_the_bytes_received_and_leaves_nothing(aws, site):
    """Two 8 MiB parts reach S3, then the server hangs up: the count is all bytes received, not the last read."""
    [result] = upload(aws, site.url("/claim/30000000000/broken.safetensors"))
    assert result.status == "failed", result.error
    assert f"the download broke after {SENT:,} of 30,000,000,000 bytes" in result.error
    assert nothing_left(aws)  # the multipart upload with its two parts is aborted


@pytest.fixture
def via_proxy(proxy):
    """S3 through the fault proxy; two attempts per request keep failures quick."""
    aws = Aws(Settings.resolve(concurrency=3, max_attempts=2))
    setup(aws)
    return aws


@pytest.mark.parametrize("times, status", [(1, "uploaded"), (None, "failed")])
def test_a_part_corrupted_on_the_way_is_sent_once_more(via_proxy, proxy, site, times, status):
    proxy.rules = [fail_part({2}, s3_error(400, "BadDigest", "The CRC32 you specified did not match"), times)]
    [result] = upload(via_proxy, site.url("/f/big.safetensors"))
    assert result.status == status and proxy.parts_failed[2] == (times or 2)
    if times:
        assert s3_bytes(via_proxy, "models/Lora/big.safetensors") == BIG
    else:
        assert result.reason == ("part 2 arrived corrupted at S3 twice (BadDigest): the network or a proxy on the "
                                 "way is altering data; nothing was kept, try again.")
        assert nothing_left(via_proxy)


# -- what the file is: read from the body's first bytes, before anything is written -----------------------------
FILES.update({
    "xl-style.safetensors": safetensors_bytes(KINDS["sdxl-lora"], 9 * MiB + 5, seed=3),  # two parts
    "base.ckpt": torch_zip_bytes({"state_dict": state_dict("sd1-checkpoint")}),  # as torch.save streams it
    "lies.safetensors": struct.pack("<Q", 10**6) + b"x" * 1000,
    "plain.safetensors": safetensors_bytes({"weight": (4, 4)}),
})


def records(aws):
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix="records/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.parametrize("how", ["f", "chunked"])  # with and without a Content-Length
def test_auto_puts_each_file_in_its_folder_and_records_what_it_is(aws, site, how):
    lora, ckpt = upload_urls(aws, "auto", [site.url(f"/{how}/xl-style.safetensors"), site.url(f"/{how}/base.ckpt")],
                             allow_private=True)
    assert (lora.status, lora.type, lora.key, lora.detected) == \
        ("uploaded", "lora", "models/Lora/xl-style.safetensors", "a LoRA for SDXL"), lora.error
    assert (ckpt.status, ckpt.type, ckpt.detected) == ("uploaded", "checkpoint", "an SD 1.x checkpoint"), ckpt.error
    assert s3_bytes(aws, lora.key) == FILES["xl-style.safetensors"]
    assert s3_bytes(aws, "models/Stable-diffusion/base.ckpt") == FILES["base.ckpt"]
    record = catalog.read_record(aws, lora.key)
    assert (record.kind, record.base) == ("lora", "sdxl")
    assert (catalog.read_record(aws, ckpt.key).kind, catalog.read_record(aws, ckpt.key).base) == ("checkpoint", "sd1")
    if how == "f":  # the same URL under Auto: the header says where it went, and the server vouches it is there
        [again] = upload_urls(aws, "auto", site.url("/f/xl-style.safetensors"), allow_private=True)
        assert (again.status, again.key) == ("skipped", lora.key)


def test_a_mismatch_is_refused_before_anything_is_written_unless_forced(aws, site):
    url = site.url("/f/xl-style.safetensors")
    [refused] = upload_urls(aws, "checkpoint", url, allow_private=True)
    assert refused.status == "failed"
    assert refused.reason.startswith("this file is a LoRA for SDXL, not an SD Checkpoint"), refused.reason
    assert nothing_left(aws) and records(aws) == []
    [forced] = upload_urls(aws, "checkpoint", url, allow_private=True, force=True)
    assert (forced.status, forced.key) == ("uploaded", "models/Stable-diffusion/xl-style.safetensors")
    assert catalog.read_record(aws, forced.key).kind == "lora"  # what it is, whatever it was filed as


def test_auto_refuses_a_lying_header_and_a_file_it_cannot_tell(aws, site):
    lies, plain = upload_urls(aws, "auto", [site.url("/f/lies.safetensors"), site.url("/f/plain.safetensors")],
                              allow_private=True)
    assert lies.status == "failed" and "its header claims 1,000,000 bytes but the whole file has 1,008" in lies.error
    assert plain.status == "failed" and plain.reason == "cannot tell what kind of model this is; choose its type " \
        "instead of Auto."
    assert nothing_left(aws)
    [chosen] = upload_urls(aws, "vae", site.url("/f/plain.safetensors"), allow_private=True)
    assert chosen.status == "uploaded" and chosen.key == "models/VAE/plain.safetensors"
