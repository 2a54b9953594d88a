"""Checks holdfast-sqs-server with boto3: send, receive, delete, visibility, batch failures
and FIFO. botocore checks no digest, so this script recomputes the MD5 digests of bodies and
message attributes with hashlib, by the algorithm AWS documents, and compares.

Usage: python boto3_check.py ENDPOINT
"""

import hashlib
import os
import struct
import sys

import boto3
import botocore.exceptions

endpoint = sys.argv[1]
sqs = boto3.client(
    "sqs",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
)
run = str(os.getpid())
passed = []


def check(name):
    def wrap(f):
        f()
        passed.append(name)
        print(f"ok - {name}")

    return wrap


def error_code(call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("expected an error")


def md5_of_attributes(attributes):
    """SQS's digest: per attribute in name order, length-prefixed name and type, a transport
    byte (1 string/number, 2 binary) and the length-prefixed value."""
    h = hashlib.md5()
    for name in sorted(attributes):
        a = attributes[name]
        for part in (name.encode(), a["DataType"].encode()):
            h.update(struct.pack(">I", len(part)) + part)
        if "BinaryValue" in a:
            value, transport = a["BinaryValue"], 2
        else:
            value, transport = a["StringValue"].encode(), 1
        h.update(bytes([transport]) + struct.pack(">I", len(value)) + value)
    return h.hexdigest()


url = sqs.create_queue(QueueName=f"py-{run}")["QueueUrl"]


@check("send and receive with attributes, digests recomputed")
def _():
    attributes = {
        "kind": {"DataType": "String", "StringValue": "order"},
        "n": {"DataType": "Number.int", "StringValue": "7"},
        "b": {"DataType": "Binary", "BinaryValue": b"\x01\x02\x03"},
    }
    sent = sqs.send_message(QueueUrl=url, MessageBody="héllo", MessageAttributes=attributes)
    assert sent["MessageId"]
    assert sent["MD5OfMessageBody"] == hashlib.md5("héllo".encode()).hexdigest(), sent
    assert sent["MD5OfMessageAttributes"] == md5_of_attributes(attributes), sent
    got = sqs.receive_message(
        QueueUrl=url, MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"], WaitTimeSeconds=1
    )["Messages"]
    assert len(got) == 1
    m = got[0]
    assert m["Body"] == "héllo"
    assert m["MessageAttributes"]["b"]["BinaryValue"] == b"\x01\x02\x03"
    assert m["MessageAttributes"]["n"]["DataType"] == "Number.int"
    assert m["Attributes"]["ApproximateReceiveCount"] == "1"
    assert m["MD5OfBody"] == sent["MD5OfMessageBody"]
    assert m["MD5OfMessageAttributes"] == md5_of_attributes(m["MessageAttributes"]) == sent["MD5OfMessageAttributes"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0", attrs
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0", attrs


@check("visibility: released at once, then redelivered with a higher count")
def _():
    sqs.send_message(QueueUrl=url, MessageBody="again")
    first = sqs.receive_message(QueueUrl=url)["Messages"][0]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    second = sqs.receive_message(QueueUrl=url, MessageSystemAttributeNames=["ApproximateReceiveCount"])["Messages"][0]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    code = error_code(
        lambda: sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=43201)
    )
    assert code == "InvalidParameterValue", code
    code = error_code(lambda: sqs.change_message_visibility(QueueUrl=url, ReceiptHandle="garbage", VisibilityTimeout=5))
    assert code == "ReceiptHandleIsInvalid", code
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])


@check("batch failures come per entry")
def _():
    sent = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "a", "MessageBody": "one"}, {"Id": "b", "MessageBody": "two", "DelaySeconds": 901}],
    )
    assert [s["Id"] for s in sent["Successful"]] == ["a"]
    assert sent["Failed"][0]["Id"] == "b" and sent["Failed"][0]["SenderFault"] is True
    m = sqs.receive_message(QueueUrl=url)["Messages"][0]
    out = sqs.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": "ok", "ReceiptHandle": m["ReceiptHandle"]}, {"Id": "bad", "ReceiptHandle": "nope"}]
    )
    assert [s["Id"] for s in out["Successful"]] == ["ok"]
    assert out["Failed"][0]["Code"] == "ReceiptHandleIsInvalid"
    code = error_code(
        lambda: sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": "r"} for i in range(11)])
    )
    assert code == "AWS.SimpleQueueService.TooManyEntriesInBatchRequest", code
    try:
        sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": "x", "ReceiptHandle": "r"}, {"Id": "x", "ReceiptHandle": "r"}])
        raise AssertionError("expected BatchEntryIdsNotDistinct")
    except sqs.exceptions.BatchEntryIdsNotDistinct:
        pass


@check("FIFO: group order, group held, content-based deduplication")
def _():
    fifo = sqs.create_queue(
        QueueName=f"py-{run}.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )["QueueUrl"]

    def send(body, group):
        return sqs.send_message(QueueUrl=fifo, MessageBody=body, MessageGroupId=group)

    a1 = send("a1", "a")
    assert send("a1", "a")["MessageId"] == a1["MessageId"]
    assert a1["SequenceNumber"]
    send("a2", "a")
    send("b1", "b")
    first = sqs.receive_message(QueueUrl=fifo)["Messages"]
    assert [m["Body"] for m in first] == ["a1"]
    held = sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in held] == ["b1"]
    sqs.delete_message(QueueUrl=fifo, ReceiptHandle=first[0]["ReceiptHandle"])
    last = sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in last] == ["a2"]
    assert error_code(lambda: sqs.send_message(QueueUrl=fifo, MessageBody="x")) == "MissingParameter"


@check("a missing queue is QueueDoesNotExist")
def _():
    try:
        sqs.get_queue_url(QueueName="no-such-queue")
        raise AssertionError("expected QueueDoesNotExist")
    except sqs.exceptions.QueueDoesNotExist:
        pass


print(f"boto3 {boto3.__version__}: {len(passed)} checks passed")
