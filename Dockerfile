# Gotaxy in a container: docs/operations.md, "Docker", and docker-compose.yml.
#   docker build -t gotaxy .
#   docker run -d --name gotaxy -v gotaxy-data:/data \
#       -p 7000:7000 -p 6000-6100:6000-6100 -p 127.0.0.1:7500:7500 -p 127.0.0.1:7022:7022 \
#       gotaxy gotaxy-server --data-dir /data --web-addr 0.0.0.0 --console-addr 0.0.0.0 --allow-ports 6000-6100
#   docker logs gotaxy        (the first start prints the client token and admin password once)
# Inside the container the panel (7500) and the console (7022) listen on all
# addresses (the default command says so), since a published port arrives
# on the container's own interface, not on its loopback; publish them on the
# host's 127.0.0.1 only, as above. No token is built into the image: a
# client takes it from a file (--token-file /run/secrets/gotaxy_token).
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /data gotaxy
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src
USER gotaxy
WORKDIR /data
VOLUME /data
# control port, web panel, SSH console (tunnel ports: publish the allowPorts you give)
EXPOSE 7000 7500 7022
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile="]
CMD ["gotaxy-server", "--data-dir", "/data", "--web-addr", "0.0.0.0", "--console-addr", "0.0.0.0"]
