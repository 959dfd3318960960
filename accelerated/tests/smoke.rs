#[test]
fn smoke() {
    assert_eq!(clae_accelerated::smoke(), 54.0);
    let e0 = tch::Tensor::f_zeros([1], (tch::Kind::Float, tch::Device::Cuda(0)))
        .err()
        .map(|e| e.to_string());
    println!(
        "before: {:?}",
        e0.map(|s| s.lines().next().unwrap_or("").to_string())
    );
}
#[test]
fn smoke2() {
    println!("load {:?}", clae_accelerated::load());
    println!("cuda {}", clae_accelerated::cuda());
    let e = tch::Tensor::f_zeros([1], (tch::Kind::Float, tch::Device::Cuda(0)))
        .err()
        .map(|e| e.to_string());
    println!(
        "after: {:?}",
        e.map(|s| s.lines().next().unwrap_or("").to_string())
    );
}
