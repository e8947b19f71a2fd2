//! Blocking calls on a broker outside a run: publishing lines to a queue, reading a whole
//! stream, deleting a queue. The end-to-end tests load and check streams with them.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use paystream_engine::Result;

use crate::address::Address;
use crate::client;

/// Whether something accepts TCP connections at `host:port` within a second.
pub fn broker_answers(endpoint: &str) -> bool {
    let Ok(mut addresses) = endpoint.to_socket_addrs() else { return false };
    addresses.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

fn address(uri: &str) -> Result<Address> {
    let base = uri.split_once('?').map_or(uri, |(b, _)| b);
    Address::parse(uri, base)
}

/// Publishes `lines` (one message each, with confirms) to the queue of `uri`
/// (`rabbitmq://HOST:PORT/QUEUE`), declaring it first: a stream queue when `stream`, else a
/// durable classic queue.
pub fn publish(uri: &str, lines: &[String], stream: bool) -> Result<()> {
    let address = address(uri)?;
    let queue = address.queues.first().cloned().ok_or_else(|| anyhow!("{uri}: no queue"))?;
    client::block_on(async {
        let connection = client::connect(&address).await?;
        let channel = connection.create_channel().await?;
        if stream {
            client::declare_stream(&channel, &queue).await?;
        } else {
            let durable = QueueDeclareOptions { durable: true, ..Default::default() };
            channel.queue_declare(queue.as_str().into(), durable, FieldTable::default()).await?;
        }
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        for chunk in lines.chunks(1000) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for line in chunk {
                let options = BasicPublishOptions::default();
                confirms.push(
                    channel.basic_publish("".into(), queue.as_str().into(), options, line.as_bytes(), BasicProperties::default()).await?,
                );
            }
            for c in confirms {
                if let Confirmation::Nack(_) = c.await? {
                    return Err(anyhow!("the broker refused a message"));
                }
            }
        }
        connection.close(200, "".into()).await.ok();
        Ok(())
    })
}

/// A message of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamMessage {
    /// Its offset.
    pub offset: u64,
    /// Its message id, if it has one.
    pub message_id: Option<String>,
    /// Its body.
    pub payload: Vec<u8>,
}

/// Every message stream queue `uri` holds now, in offset order.
pub fn read_stream(uri: &str) -> Result<Vec<StreamMessage>> {
    let address = address(uri)?;
    let queue = address.queues.first().cloned().ok_or_else(|| anyhow!("{uri}: no queue"))?;
    client::block_on(async {
        let connection = client::connect(&address).await?;
        let end = client::stream_end(&connection, &queue).await?;
        let mut out = Vec::new();
        if end > 0 {
            let (_, mut consumer) = client::consume_stream(&connection, &queue, AMQPValue::LongString("first".into()), 2000).await?;
            while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                let delivery = delivery.context("cannot read the stream")?;
                let offset = client::stream_offset(&delivery.properties).unwrap_or(0);
                let message_id = delivery.properties.message_id().as_ref().map(|s| s.to_string());
                delivery.ack(BasicAckOptions::default()).await.ok();
                out.push(StreamMessage { offset, message_id, payload: delivery.data });
                if offset + 1 >= end {
                    break;
                }
            }
        }
        connection.close(200, "".into()).await.ok();
        Ok(out)
    })
}

/// Deletes the queue of `uri`, if it exists.
pub fn delete_queue(uri: &str) -> Result<()> {
    let address = address(uri)?;
    let queue = address.queues.first().cloned().ok_or_else(|| anyhow!("{uri}: no queue"))?;
    client::block_on(async {
        let connection = client::connect(&address).await?;
        let channel = connection.create_channel().await?;
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.ok();
        connection.close(200, "".into()).await.ok();
        Ok(())
    })
}

/// The messages ready for delivery in the classic queue of `uri` (not those delivered and not
/// yet acknowledged).
pub fn queue_messages(uri: &str) -> Result<u32> {
    let address = address(uri)?;
    let queue = address.queues.first().cloned().ok_or_else(|| anyhow!("{uri}: no queue"))?;
    client::block_on(async {
        let connection = client::connect(&address).await?;
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await?;
        connection.close(200, "".into()).await.ok();
        Ok(declared.message_count())
    })
}
