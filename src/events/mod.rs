//! libvirt event capture (domain, network, storage pool, node device and
//! secret callbacks), normalized into records. The callbacks need the
//! default event loop that `libvirt::event_loop` already runs for keepalive
//! and the close callback; registration arrives with the events subsystem.
