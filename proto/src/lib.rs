//! Generated types for kruntimes' two gRPC protocols: the user-facing runtimed
//! API (`kruntimes.runtimed.v1`) and the Runtime Server protocol
//! (`kruntimes.runtime.v1`) that runtimed speaks to the bash, python or any
//! custom Runtime Server.

/// The Runtime Server protocol; runtimed is its only client.
#[allow(clippy::large_enum_variant)]
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("kruntimes.runtime.v1");
    }
}

/// The runtimed API seen by users and `krt`.
#[allow(clippy::large_enum_variant)]
pub mod runtimed {
    pub mod v1 {
        tonic::include_proto!("kruntimes.runtimed.v1");
    }
}

/// Encoded `FileDescriptorSet` of both packages, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kruntimes_descriptor");

pub mod address;
pub mod events;
pub mod handoff;
pub mod listen;
pub mod quiet;

/// Converts between `SystemTime` and protobuf timestamps.
pub mod time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn to_timestamp(t: SystemTime) -> prost_types::Timestamp {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }
    }

    pub fn now() -> prost_types::Timestamp {
        to_timestamp(SystemTime::now())
    }

    pub fn from_timestamp(t: &prost_types::Timestamp) -> SystemTime {
        let secs = u64::try_from(t.seconds).unwrap_or(0);
        let nanos = u32::try_from(t.nanos).unwrap_or(0);
        UNIX_EPOCH + Duration::new(secs, nanos)
    }
}
