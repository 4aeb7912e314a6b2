pub mod versitygw;
