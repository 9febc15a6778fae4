# The systemd sandbox llmctld and `llmctl worker` share (module.nix, worker-module.nix): GPUs
# reachable, the rest of the system locked away. Each service adds its own ProtectHome.
{
  SupplementaryGroups = [
    "video"
    "render"
  ];
  # GPUs: device nodes stay visible (PrivateDevices would hide them), limited to the
  # GPU classes; access itself comes from the video/render groups.
  PrivateDevices = false;
  DevicePolicy = "closed";
  DeviceAllow = [
    "char-drm rw" # /dev/dri: Vulkan, ROCm, Intel
    "char-kfd rw" # /dev/kfd: ROCm
    "char-nvidia-frontend rw" # /dev/nvidia*, /dev/nvidiactl
    "char-nvidia-uvm rw"
    "char-nvidia-caps rw"
  ];

  NoNewPrivileges = true;
  CapabilityBoundingSet = "";
  ProtectSystem = "strict";
  PrivateTmp = true;
  ProtectClock = true;
  ProtectControlGroups = true;
  ProtectHostname = true;
  ProtectKernelLogs = true;
  ProtectKernelModules = true;
  ProtectKernelTunables = true;
  ProtectProc = "invisible";
  RestrictAddressFamilies = [
    "AF_UNIX"
    "AF_INET"
    "AF_INET6"
  ];
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  LockPersonality = true;
  RemoveIPC = true;
  SystemCallArchitectures = "native";
  SystemCallFilter = [
    "@system-service"
    "@resources"
    "~@privileged"
  ];
  # Not set on purpose: MemoryDenyWriteExecute (GPU drivers JIT-compile kernels) and
  # PrivateUsers (it would map the video/render groups away).
}
