from setuptools import find_packages, setup

setup(
    name="gotaxy",
    version="0.1.0",
    description="Self-hosted reverse tunnel (intranet penetration) on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["gotaxy", "gotaxy.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/gotaxy_server.py", "plugins/gotaxy_client.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "service-identity>=21.1",
        "pyopenssl>=26.0",
        "cryptography>=44",
        "txaio>=23.1",
        "klein>=23.5",
        "dataset>=1.6",
        "attrs>=23.1",
        "treq>=23.11",
        "argon2-cffi>=23.1",
        "tomli>=2.0; python_version<'3.11'",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2"]},
    entry_points={"console_scripts": ["gotaxy = gotaxy.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
