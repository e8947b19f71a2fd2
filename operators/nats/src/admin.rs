//! Blocking calls on a NATS server outside a run: whether it answers, publishing lines to a
//! stream, reading a whole stream with its message ids, deleting a stream. The end-to-end tests
//! load and check streams with them.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::PublishMessage;
use futures_lite::StreamExt;
use paystream_engine::Result;

use crate::address::Address;
use crate::client;

/// Whether something accepts TCP connections at `host:port` within a second.
pub fn server_answers(endpoint: &str) -> bool {
    let Ok(mut addresses) = endpoint.to_socket_addrs() else { return false };
    addresses.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// A message read back from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// Its `Nats-Msg-Id` header, when it had one.
    pub message_id: Option<String>,
    pub payload: Vec<u8>,
}

/// The address and the `subject` option of `uri`.
fn parse(uri: &str) -> Result<(Address, Option<String>)> {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let subject = query.split('&').find_map(|kv| kv.strip_prefix("subject=")).map(String::from);
    Ok((Address::parse(uri, base)?, subject))
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes `lines` (one message each, acknowledged, without message ids) to the stream of
/// `uri` (`nats://HOST:PORT/STREAM[?subject=S]`, subject by default the stream's name), creating
/// the stream when missing.
pub fn publish(uri: &str, lines: &[String]) -> Result<()> {
    let (address, subject) = parse(uri)?;
    let subject = subject.unwrap_or_else(|| address.stream.clone());
    client::block_on(async {
        let context = client::connect(&address, TIMEOUT).await?;
        if client::find_stream(&context, &address.stream).await?.is_none() {
            let config = async_nats::jetstream::stream::Config {
                name: address.stream.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            };
            context.create_stream(config).await.map_err(|e| anyhow!("cannot create stream {}: {e}", address.stream))?;
        }
        for chunk in lines.chunks(1000) {
            let mut acks = Vec::with_capacity(chunk.len());
            for line in chunk {
                let publish = PublishMessage::build().payload(line.clone().into_bytes().into());
                acks.push(context.send_publish(subject.clone(), publish).await.context("cannot publish")?);
            }
            for ack in acks {
                ack.await.map_err(|e| anyhow!("no acknowledgement: {e}"))?;
            }
        }
        Ok(())
    })
}

/// Every message the stream of `uri` holds now, in sequence order.
pub fn read_stream(uri: &str) -> Result<Vec<StoredMessage>> {
    let (address, _) = parse(uri)?;
    client::block_on(async {
        let context = client::connect(&address, TIMEOUT).await?;
        let Some(mut stream) = client::find_stream(&context, &address.stream).await? else {
            return Err(anyhow!("no stream {}", address.stream));
        };
        let (_, last) = client::stream_bounds(&mut stream).await?;
        let mut out = Vec::new();
        if last == 0 {
            return Ok(out);
        }
        let config = pull::Config { deliver_policy: DeliverPolicy::All, ack_policy: AckPolicy::None, ..Default::default() };
        let consumer = stream.create_consumer(config).await.context("cannot create a consumer")?;
        loop {
            let mut batch = consumer
                .batch()
                .max_messages(1000)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .map_err(|e| anyhow!("cannot fetch: {e}"))?;
            let mut fetched = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| anyhow!("cannot fetch: {e}"))?;
                let info = message.info().map_err(|e| anyhow!("no metadata: {e}"))?;
                let sequence = info.stream_sequence;
                let message_id = message
                    .message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_string());
                out.push(StoredMessage {
                    sequence,
                    subject: message.message.subject.to_string(),
                    message_id,
                    payload: message.message.payload.to_vec(),
                });
                fetched += 1;
                if sequence >= last {
                    return Ok(out);
                }
            }
            if fetched == 0 {
                return Ok(out);
            }
        }
    })
}

/// Deletes the stream of `uri` (nothing happens when it does not exist).
pub fn delete_stream(uri: &str) -> Result<()> {
    let (address, _) = parse(uri)?;
    client::block_on(async {
        let context = client::connect(&address, TIMEOUT).await?;
        if client::find_stream(&context, &address.stream).await?.is_some() {
            context.delete_stream(&address.stream).await.map_err(|e| anyhow!("cannot delete stream {}: {e}", address.stream))?;
        }
        Ok(())
    })
}
