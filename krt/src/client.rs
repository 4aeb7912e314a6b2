//! Connects to a runtimed at `host:port` or `unix:/path`.

use crate::error::{Error, Result};
use kruntimes_proto::address::Address;
use kruntimes_proto::runtimed::v1::runtimed_client::RuntimedClient;
use tonic::transport::Channel;

pub type Client = RuntimedClient<Channel>;

const MAX_MESSAGE_BYTES: usize = 16 << 20;

pub async fn connect(addr: &str) -> Result<Client> {
    let address = Address::parse(addr).map_err(Error::Usage)?;
    let channel = address.channel().map_err(|source| Error::Connect {
        addr: addr.to_string(),
        source,
    })?;
    Ok(RuntimedClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
