//! A blocking CRI v1 client over containerd's socket, for the VM tier's pod tests and the
//! pod benchmark: it plays the kubelet's part (crictl is not packaged for Debian 12).
//! Requests are the `k8s-cri` crate's types; each call runs on a small runtime of its own.
//! [`stream`] opens what `Exec` and `Attach` return.
//! [`Containerd`] starts the containerd it talks to.

use std::path::Path;

mod containerd;
pub mod kubelet;
pub mod stream;
pub use containerd::{deploy_handlers, Containerd, IMAGE, NS, PAUSE};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connection to a CRI runtime's socket.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A gRPC error as one line: `Code: message`.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

macro_rules! calls {
    ($($(#[$doc:meta])* $name:ident($req:ident) -> $resp:ident via $svc:ident;)*) => {
        impl Cri {
            $(
                $(#[$doc])*
                pub fn $name(&mut self, req: cri::$req) -> Result<cri::$resp> {
                    let svc = &mut self.$svc;
                    self.rt
                        .block_on(svc.$name(req))
                        .map(tonic::Response::into_inner)
                        .map_err(status)
                }
            )*
        }
    };
}

calls! {
    /// `Version`.
    version(VersionRequest) -> VersionResponse via runtime;
    /// `RunPodSandbox`.
    run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse via runtime;
    /// `StopPodSandbox`.
    stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse via runtime;
    /// `RemovePodSandbox`.
    remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse via runtime;
    /// `PodSandboxStatus`.
    pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse via runtime;
    /// `CreateContainer`.
    create_container(CreateContainerRequest) -> CreateContainerResponse via runtime;
    /// `StartContainer`.
    start_container(StartContainerRequest) -> StartContainerResponse via runtime;
    /// `StopContainer`.
    stop_container(StopContainerRequest) -> StopContainerResponse via runtime;
    /// `RemoveContainer`.
    remove_container(RemoveContainerRequest) -> RemoveContainerResponse via runtime;
    /// `ListContainers`.
    list_containers(ListContainersRequest) -> ListContainersResponse via runtime;
    /// `ContainerStatus`.
    container_status(ContainerStatusRequest) -> ContainerStatusResponse via runtime;
    /// `ExecSync`.
    exec_sync(ExecSyncRequest) -> ExecSyncResponse via runtime;
    /// `Exec`: a URL to open with [`stream::Stream`].
    exec(ExecRequest) -> ExecResponse via runtime;
    /// `Attach`: a URL to open with [`stream::Stream`].
    attach(AttachRequest) -> AttachResponse via runtime;
    /// `ContainerStats`.
    container_stats(ContainerStatsRequest) -> ContainerStatsResponse via runtime;
    /// `PodSandboxStats`.
    pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse via runtime;
    /// `ListImages`.
    list_images(ListImagesRequest) -> ListImagesResponse via images;
}

impl Cri {
    /// Connects to the CRI socket at `socket`.
    pub fn connect(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = socket.to_owned();
        // The URI is a placeholder: every connection goes to the unix socket.
        let channel = rt
            .block_on(Endpoint::try_from("http://[::]:0")?.connect_with_connector(
                tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }),
            ))
            .context("connecting to the CRI socket")?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }
}
