#!/bin/bash -e
# Inside the image: the unprivileged service user and the enabled units.
set -euo pipefail
if ! getent passwd picluster > /dev/null; then
    adduser --system --group --home /var/lib/picluster --no-create-home \
        --gecos "picluster agent" picluster
fi
systemctl enable picluster-agent.service picluster-jupyter.service avahi-daemon.service
