# twzlinux development image: Debian 12 with Python 3.11, gcc and the project installed in .venv.
# Running the daemon and the tests needs a privileged container (seccomp user notification,
# ptrace, userfaultfd, /dev/kvm, vm.max_map_count): see .devcontainer/devcontainer.json, or
#   docker build -t twzlinux . && docker run --rm -it --privileged twzlinux scripts/test
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        gcc libc6-dev make git coreutils util-linux procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspaces/twzlinux
COPY . .
# a host .venv copied in would not run here; sysctl cannot be set while building (setup notes it)
RUN rm -rf .venv && scripts/setup

CMD ["bash"]
