"""Creates a bucket on an S3 endpoint with a SigV4-signed PUT, using only the standard library.

usage: s3_make_bucket.py ENDPOINT ACCESS_KEY SECRET_KEY BUCKET
Exits 0 if the bucket was made or already exists (owned by us), 1 otherwise. .ci/engines.sh
polls it until SeaweedFS's S3 gateway is ready (it answers 403 until its filer is up).
"""

import datetime
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request


def sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def main() -> int:
    endpoint, access, secret, bucket = sys.argv[1:5]
    region, service = "us-east-1", "s3"
    host = urllib.parse.urlparse(endpoint).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            "PUT",
            f"/{bucket}",
            "",
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = sign(sign(sign(sign(f"AWS4{secret}".encode(), day), region), service), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT", data=b"")
    for name, value in headers.items():
        if name != "host":
            req.add_header(name, value)
    req.add_header(
        "Authorization",
        f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={signature}",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return 0 if resp.status in (200, 204) else 1
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        # There already: ours, or (SeaweedFS restarted on its data) one it no longer counts
        # as owned; either way it answers signed requests again.
        there = "BucketAlreadyOwnedByYou" in body or "BucketAlreadyExists" in body
        return 0 if e.code == 409 and there else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
