import glob

from setuptools import find_packages, setup

setup(
    name="gotaxy",
    version="0.1.0",
    description="Self-hosted reverse tunnel (intranet penetration) on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["gotaxy", "gotaxy.*"]) + ["twisted.plugins", "gotaxy.web.www"],
    # Every package sits at its own path under the project's root (the panel's
    # front end lives in www/; gotaxy/web/www is a symbolic link to it). With
    # that layout and the root named as package_dir "", an editable install is
    # a static .pth that puts the checkout on sys.path, so Twisted finds
    # twisted/plugins/gotaxy_*.py there, as a plain install finds them in
    # site-packages/twisted/plugins/ (tests/test_install.py tries both, in
    # either order, from another directory).
    package_dir={"": "."},
    package_data={
        "twisted": ["plugins/gotaxy_server.py", "plugins/gotaxy_client.py"],
        "gotaxy.web.www": ["*.html", "*.js", "*.css", "*.svg", "i18n/*.json"],
    },
    # The documentation the systemd units name (Documentation=), under the
    # environment's prefix: /opt/gotaxy/share/doc/gotaxy/ for /opt/gotaxy.
    data_files=[("share/doc/gotaxy", ["README.md", *sorted(glob.glob("docs/*.md"))])],
    install_requires=[
        "twisted[tls,conch]>=23.10",
        "service-identity>=21.1",
        "pyopenssl>=26.0",
        "cryptography>=44",
        "txaio>=23.1",
        "klein>=23.5",
        "dataset>=1.6",
        # PostgreSQL (database.url = "postgresql://..."), the engine several
        # servers can share; the binary wheel needs no libpq on the machine.
        "psycopg[binary]>=3.1",
        "attrs>=23.1",
        "treq>=23.11",
        "prometheus-client>=0.17",
        "argon2-cffi>=23.1",
        "pyotp>=2.9",
        "qrcode>=7.4",
        "tomli>=2.0; python_version<'3.11'",
        "tomli-w>=1.0",
        # ACME (acme.enable): certbot's protocol implementation, not a hand-written client.
        "acme>=3.0",
        # The HTTP front's parser (gotaxy.proxy.vhost): sans-I/O, so bodies stream.
        "h11>=0.14",
        # Which wildcards are over-broad (gotaxy.server.domains): the Public Suffix List, a copy shipped with it.
        "publicsuffixlist>=1.0",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2", "jsonschema>=4.18", "playwright>=1.40", "pyyaml>=6", "websockets>=12"]},
    entry_points={"console_scripts": ["gotaxy = gotaxy.cli:main", "gotaxy-client = gotaxy.client.admin:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
