// The screenshot worker a Node team would deploy, as the benchmark's peer:
// sqs-consumer (batch size 10) feeding puppeteer-cluster with a fresh
// browser context per job (CONCURRENCY_CONTEXT), waiting for `load`, PNG,
// stored with the AWS SDK v3 S3 client, then the message deleted.
//
// Settings (environment): QUEUE_URL, BUCKET, CONCURRENCY (default 4),
// CHROMIUM (default /usr/bin/chromium), AWS_ENDPOINT_URL and the usual
// AWS_* credentials. Prints `stored <id>` per stored image.
'use strict';

const { Consumer } = require('sqs-consumer');
const { SQSClient } = require('@aws-sdk/client-sqs');
const { S3Client, PutObjectCommand } = require('@aws-sdk/client-s3');
const { Cluster } = require('puppeteer-cluster');
const puppeteer = require('puppeteer');

async function main() {
  const queueUrl = process.env.QUEUE_URL;
  const bucket = process.env.BUCKET;
  const concurrency = Number(process.env.CONCURRENCY || 4);
  const s3 = new S3Client({ forcePathStyle: true });
  const sqs = new SQSClient({});

  const cluster = await Cluster.launch({
    concurrency: Cluster.CONCURRENCY_CONTEXT,
    maxConcurrency: concurrency,
    puppeteer,
    timeout: 60000,
    puppeteerOptions: {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      // What this machine needs: root (no sandbox), and no reaching for
      // the internet at start.
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    },
  });

  await cluster.task(async ({ page, data }) => {
    const options = data.options || {};
    await page.setViewport({
      width: options.width || 1280,
      height: options.height || 800,
      deviceScaleFactor: options.device_scale_factor || 1,
    });
    await page.goto(data.url, { waitUntil: 'load' });
    const png = await page.screenshot({ type: 'png' });
    await s3.send(new PutObjectCommand({
      Bucket: bucket,
      Key: `${data.id}.png`,
      Body: png,
      ContentType: 'image/png',
    }));
    process.stdout.write(`stored ${data.id}\n`);
  });

  const consumer = Consumer.create({
    queueUrl,
    sqs,
    batchSize: 10,
    waitTimeSeconds: 20,
    handleMessage: async (message) => {
      await cluster.execute(JSON.parse(message.Body));
      return message;
    },
  });
  consumer.on('error', (err) => console.error('consumer error:', err.message));
  consumer.on('processing_error', (err) => console.error('processing error:', err.message));

  const stop = async () => {
    consumer.stop();
    await cluster.idle();
    await cluster.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  consumer.start();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
