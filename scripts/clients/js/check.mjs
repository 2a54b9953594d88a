// Checks holdfast-sqs-server with the AWS SDK for JavaScript v3: send, receive, delete,
// visibility, batch failures and FIFO. The SDK verifies the MD5 digest of every body sent
// and received itself. Usage: node check.mjs ENDPOINT
import assert from "node:assert/strict";
import {
  SQSClient, CreateQueueCommand, SendMessageCommand, ReceiveMessageCommand, DeleteMessageCommand,
  ChangeMessageVisibilityCommand, DeleteMessageBatchCommand, SendMessageBatchCommand,
  GetQueueAttributesCommand, QueueDoesNotExist, GetQueueUrlCommand,
} from "@aws-sdk/client-sqs";

const endpoint = process.argv[2];
assert.ok(endpoint, "usage: node check.mjs ENDPOINT");
const sqs = new SQSClient({
  endpoint, region: "us-east-1", credentials: { accessKeyId: "test", secretAccessKey: "test" },
});
const run = `${process.pid}`;
const checks = [];
async function check(name, f) {
  await f();
  checks.push(name);
  console.log(`ok - ${name}`);
}

const { QueueUrl: url } = await sqs.send(new CreateQueueCommand({ QueueName: `js-${run}` }));

await check("send and receive with attributes (body digests verified by the SDK)", async () => {
  const sent = await sqs.send(new SendMessageCommand({
    QueueUrl: url, MessageBody: "héllo",
    MessageAttributes: {
      kind: { DataType: "String", StringValue: "order" },
      n: { DataType: "Number", StringValue: "7" },
      b: { DataType: "Binary", BinaryValue: new Uint8Array([1, 2, 3]) },
    },
  }));
  assert.ok(sent.MessageId);
  const got = await sqs.send(new ReceiveMessageCommand({
    QueueUrl: url, MessageAttributeNames: ["All"], MessageSystemAttributeNames: ["All"], WaitTimeSeconds: 1,
  }));
  assert.equal(got.Messages.length, 1);
  const m = got.Messages[0];
  assert.equal(m.Body, "héllo");
  assert.equal(m.MessageAttributes.n.StringValue, "7");
  assert.deepEqual([...m.MessageAttributes.b.BinaryValue], [1, 2, 3]);
  assert.equal(m.Attributes.ApproximateReceiveCount, "1");
  await sqs.send(new DeleteMessageCommand({ QueueUrl: url, ReceiptHandle: m.ReceiptHandle }));
  const after = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ["All"] }));
  assert.equal(after.Attributes.ApproximateNumberOfMessages, "0");
  assert.equal(after.Attributes.ApproximateNumberOfMessagesNotVisible, "0");
});

await check("visibility: released at once, then redelivered with a higher count", async () => {
  await sqs.send(new SendMessageCommand({ QueueUrl: url, MessageBody: "again" }));
  const first = (await sqs.send(new ReceiveMessageCommand({ QueueUrl: url }))).Messages[0];
  await sqs.send(new ChangeMessageVisibilityCommand({ QueueUrl: url, ReceiptHandle: first.ReceiptHandle, VisibilityTimeout: 0 }));
  const second = (await sqs.send(new ReceiveMessageCommand({ QueueUrl: url, MessageSystemAttributeNames: ["ApproximateReceiveCount"] }))).Messages[0];
  assert.equal(second.Attributes.ApproximateReceiveCount, "2");
  assert.notEqual(second.ReceiptHandle, first.ReceiptHandle);
  await assert.rejects(
    sqs.send(new ChangeMessageVisibilityCommand({ QueueUrl: url, ReceiptHandle: "garbage", VisibilityTimeout: 5 })),
    (e) => e.name === "ReceiptHandleIsInvalid",
  );
  await sqs.send(new DeleteMessageCommand({ QueueUrl: url, ReceiptHandle: second.ReceiptHandle }));
});

await check("batch failures come per entry", async () => {
  const sent = await sqs.send(new SendMessageBatchCommand({
    QueueUrl: url,
    Entries: [{ Id: "a", MessageBody: "one" }, { Id: "b", MessageBody: "two", DelaySeconds: 901 }],
  }));
  assert.deepEqual(sent.Successful.map((s) => s.Id), ["a"]);
  assert.equal(sent.Failed[0].Id, "b");
  assert.equal(sent.Failed[0].SenderFault, true);
  const m = (await sqs.send(new ReceiveMessageCommand({ QueueUrl: url }))).Messages[0];
  const out = await sqs.send(new DeleteMessageBatchCommand({
    QueueUrl: url, Entries: [{ Id: "ok", ReceiptHandle: m.ReceiptHandle }, { Id: "bad", ReceiptHandle: "nope" }],
  }));
  assert.deepEqual(out.Successful.map((s) => s.Id), ["ok"]);
  assert.equal(out.Failed[0].Code, "ReceiptHandleIsInvalid");
  await assert.rejects(
    sqs.send(new DeleteMessageBatchCommand({
      QueueUrl: url, Entries: [{ Id: "x", ReceiptHandle: "r" }, { Id: "x", ReceiptHandle: "r" }],
    })),
    (e) => e.name === "BatchEntryIdsNotDistinct",
  );
});

await check("FIFO: group order, group held, content-based deduplication", async () => {
  const { QueueUrl: fifo } = await sqs.send(new CreateQueueCommand({
    QueueName: `js-${run}.fifo`, Attributes: { FifoQueue: "true", ContentBasedDeduplication: "true" },
  }));
  const send = (body, group) => sqs.send(new SendMessageCommand({ QueueUrl: fifo, MessageBody: body, MessageGroupId: group }));
  const a1 = await send("a1", "a");
  assert.equal((await send("a1", "a")).MessageId, a1.MessageId);
  assert.ok(a1.SequenceNumber);
  await send("a2", "a");
  await send("b1", "b");
  const first = (await sqs.send(new ReceiveMessageCommand({ QueueUrl: fifo }))).Messages;
  assert.deepEqual(first.map((m) => m.Body), ["a1"]);
  const next = (await sqs.send(new ReceiveMessageCommand({ QueueUrl: fifo, MaxNumberOfMessages: 10 }))).Messages;
  assert.deepEqual(next.map((m) => m.Body), ["b1"]);
  await sqs.send(new DeleteMessageCommand({ QueueUrl: fifo, ReceiptHandle: first[0].ReceiptHandle }));
  const last = (await sqs.send(new ReceiveMessageCommand({ QueueUrl: fifo, MaxNumberOfMessages: 10 }))).Messages;
  assert.deepEqual(last.map((m) => m.Body), ["a2"]);
});

await check("a missing queue is QueueDoesNotExist", async () => {
  await assert.rejects(sqs.send(new GetQueueUrlCommand({ QueueName: "no-such-queue" })), (e) => e instanceof QueueDoesNotExist);
});

console.log(`JavaScript SDK v3: ${checks.length} checks passed`);
