// A queue consumer built on sqs-consumer, as scripts/bench-peers.sh measures it:
//   node sqs_consumer.mjs QUEUE_URL MODE SLOTS [HANDLER_MS]
// MODE `single`: handleMessage, batchSize 10 (each message of a receive handled at once and
// deleted on its own); `batch`: handleMessageBatch (one DeleteMessageBatch per receive).
// SLOTS messages are handled at once: ceil(SLOTS / 10) Consumer instances of batchSize 10 (the
// last one smaller), sharing one SQSClient. `xK` (e.g. x4) asks for K consumers of batchSize
// 10. The handler waits HANDLER_MS (default 0: returns at once) and acknowledges. Runs until
// killed; errors go to stderr.
import http from "node:http";
import { SQSClient } from "@aws-sdk/client-sqs";
import { Consumer } from "sqs-consumer";

const [url, mode, slotsArg, handlerArg] = process.argv.slice(2);
if (!url || !["single", "batch"].includes(mode) || !slotsArg) {
  console.error("usage: node sqs_consumer.mjs QUEUE_URL single|batch SLOTS|xK [HANDLER_MS]");
  process.exit(2);
}
const sizes = [];
if (slotsArg.startsWith("x")) {
  for (let i = 0; i < Number(slotsArg.slice(1)); i++) sizes.push(10);
} else {
  for (let left = Number(slotsArg); left > 0; left -= 10) sizes.push(Math.min(10, left));
}
if (sizes.length === 0 || sizes.some((s) => !(s >= 1))) {
  console.error(`sqs_consumer: bad SLOTS ${slotsArg}`);
  process.exit(2);
}
const handlerMs = Number(handlerArg ?? 0);
const work = handlerMs > 0 ? () => new Promise((r) => setTimeout(r, handlerMs)) : async () => {};

// The SDK's default of 50 sockets would queue requests of more than ~25 consumers.
const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(50, sizes.length * 12) });
const sqs = new SQSClient({ endpoint: new URL(url).origin, requestHandler: { httpAgent: agent } });
for (const batchSize of sizes) {
  const options = { queueUrl: url, sqs, batchSize, waitTimeSeconds: 20 };
  if (mode === "single") {
    options.handleMessage = async (message) => {
      await work();
      return message;
    };
  } else {
    options.handleMessageBatch = async (messages) => {
      await work();
      return messages;
    };
  }
  const consumer = Consumer.create(options);
  consumer.on("error", (err) => console.error(`sqs_consumer: error: ${err.message}`));
  consumer.on("processing_error", (err) => console.error(`sqs_consumer: processing error: ${err.message}`));
  consumer.start();
}
