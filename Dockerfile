# Gotaxy in a container.
#   docker build -t gotaxy .
#   docker run -d --name gotaxy -p 7000:7000 -p 6000-6100:6000-6100 -v gotaxy-data:/data \
#       gotaxy gotaxy-server --data-dir /data --allow-ports 6000-6100
#   docker logs gotaxy        (the first start prints the client token once)
# A client:
#   docker run -d --network host -v gotaxy-client:/data gotaxy gotaxy-client \
#       --data-dir /data --server example.org:7000 --token TOKEN --fingerprint SHA256:... \
#       --tunnel web=tcp:127.0.0.1:8080
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /data gotaxy
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src
USER gotaxy
WORKDIR /data
VOLUME /data
EXPOSE 7000
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile="]
CMD ["gotaxy-server", "--data-dir", "/data"]
