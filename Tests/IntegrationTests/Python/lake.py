"""What the storage tests ask of a warehouse: read an S3 storage's objects back.

    lake.py create-bucket ENDPOINT BUCKET
    lake.py audit ENDPOINT BUCKET PREFIX TABLE TENANT

`audit` reads every object of the table's tenant twice, with a plain S3 client (boto3: list,
get, gunzip, one JSON object per line) and with DuckDB through its S3 reader (httpfs, Hive
partitions), and prints one JSON object: what each found.
"""

import gzip
import json
import os
import sys

import boto3


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    )


def create_bucket(endpoint, bucket):
    client(endpoint).create_bucket(Bucket=bucket)


def audit(endpoint, bucket, prefix, table, tenant):
    s3 = client(endpoint)
    base = (prefix.strip("/") + "/" if prefix.strip("/") else "") + f"table={table}/tenant={tenant}/"
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        keys += [item["Key"] for item in page.get("Contents", [])]
    ids = []
    order_ids = []
    bad_lines = 0
    for key in keys:
        body = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        for line in body.decode("utf-8").split("\n"):
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad_lines += 1
                continue
            ids.append(record["_id"])
            if "order_id" in record:
                order_ids.append(record["order_id"])

    import duckdb
    import duckdb_extension_httpfs

    extension = os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions", "v" + duckdb.__version__, "httpfs.duckdb_extension")
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.sql(f"LOAD '{extension}'")
    host = endpoint.split("://", 1)[1].rstrip("/")
    con.sql(f"SET s3_endpoint='{host}'")
    con.sql("SET s3_url_style='path'")
    con.sql("SET s3_use_ssl=false")
    con.sql("SET s3_region='us-east-1'")
    con.sql(f"SET s3_access_key_id='{os.environ.get('AWS_ACCESS_KEY_ID', 'test')}'")
    con.sql(f"SET s3_secret_access_key='{os.environ.get('AWS_SECRET_ACCESS_KEY', 'test')}'")
    source = f"read_json('s3://{bucket}/{base}*/*/*.jsonl.gz', format='newline_delimited', hive_partitioning=true, union_by_name=true)"
    rows, distinct, tables, tenants, dates = con.sql(
        f"SELECT count(*), count(DISTINCT _id), count(DISTINCT \"table\"), count(DISTINCT tenant), count(DISTINCT date) FROM {source}"
    ).fetchone()
    distinct_orders = 0
    if order_ids:
        distinct_orders = con.sql(f"SELECT count(DISTINCT order_id) FROM {source}").fetchone()[0]
    print(json.dumps({
        "objects": len(keys),
        "python": {"lines": len(ids), "distinct_ids": len(set(ids)), "distinct_orders": len(set(order_ids)), "bad_lines": bad_lines},
        "duckdb": {"rows": rows, "distinct_ids": distinct, "distinct_orders": distinct_orders, "tables": tables, "tenants": tenants, "dates": dates},
    }))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "create-bucket":
        create_bucket(sys.argv[2], sys.argv[3])
    elif command == "audit":
        audit(*sys.argv[2:7])
    else:
        sys.exit(f"unknown command {command}")
