"""What a step records about where it ran: the host folders it could see."""

from __future__ import annotations

from unlearn_lib.compliance.steps import host_mounts

# /proc/self/mountinfo of a podman container started by kfp.local's DockerRunner (trimmed).
MOUNTINFO = """\
812 700 0:90 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containers/storage/overlay/l/X
813 812 0:93 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
814 812 0:94 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
820 812 254:0 /var/lib/containers/storage/overlay-containers/ab12/userdata/hostname /etc/hostname rw - ext4 /dev/vda rw
821 812 254:0 /var/lib/containers/storage/overlay-containers/ab12/userdata/hosts /etc/hosts rw - ext4 /dev/vda rw
822 812 254:0 /var/lib/containers/storage/overlay-containers/ab12/u/.containerenv /run/.containerenv rw - ext4 /dev/vda
823 812 254:0 /work/main/workspace/runs/kfp/run-1 /work/main/workspace/runs/kfp/run-1 rw - ext4 /dev/vda rw
824 812 0:95 / /sys ro,nosuid - sysfs sysfs ro
"""


def test_only_bind_mounted_host_folders_are_reported():
    assert host_mounts(MOUNTINFO) == ["/work/main/workspace/runs/kfp/run-1"]


def test_a_workspace_mount_would_show():
    extra = "830 812 254:0 /work/main/workspace /workspace rw - ext4 /dev/vda rw\n"
    assert "/work/main/workspace" in host_mounts(MOUNTINFO + extra)
