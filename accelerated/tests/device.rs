//! Devices and the libtorch switches reached through `dlsym`; everything
//! here works without a GPU.

use clae_accelerated::device::{
    cuda_autocast_dtype_is_bf16, cuda_available, ensure_device, probe_bf16_autocast_switch,
    set_tf32_allowed, tf32_allowed, with_bf16_autocast, Precision, TchReal,
};
use tch::Device;

#[test]
fn tf32_switch_round_trips() {
    let initial = tf32_allowed().unwrap();
    set_tf32_allowed(true).unwrap();
    assert!(tf32_allowed().unwrap());
    set_tf32_allowed(false).unwrap();
    assert!(!tf32_allowed().unwrap());
    set_tf32_allowed(initial).unwrap();
}

#[test]
fn bf16_autocast_dtype_switch_works_and_is_restored() {
    assert!(
        probe_bf16_autocast_switch().unwrap(),
        "dtype was not set to bf16"
    );
    assert!(
        !cuda_autocast_dtype_is_bf16().unwrap(),
        "dtype not restored (libtorch's default is fp16)"
    );
    let r = with_bf16_autocast(|| 3);
    if cuda_available() {
        assert_eq!(r.unwrap(), 3);
    } else {
        assert!(matches!(r, Err(clae_accelerated::Error::Device(_))));
    }
}

#[test]
fn devices_and_precisions() {
    assert!(ensure_device(Device::Cpu).is_ok());
    assert!(ensure_device(Device::Mps).is_err());
    assert_eq!(ensure_device(Device::Cuda(0)).is_ok(), cuda_available());
    assert_eq!(<f32 as TchReal>::PRECISION.kind(), tch::Kind::Float);
    assert_eq!(Precision::of::<f64>().name(), "f64");
}
