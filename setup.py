"""Packaging for saam_nb: everything (version, requirements, scripts) comes from settings.ini."""
from configparser import ConfigParser
import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

for key in 'version description keywords author author_email lib_name user min_python license'.split():
    assert key in cfg, f'settings.ini is missing `{key}`'

licenses = {'apache2': 'Apache-2.0'}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable',
            '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

license_name = licenses[cfg['license']]
min_python = cfg['min_python']
requirements = cfg.get('requirements', '').split()
docs_requirements = cfg.get('docs_requirements', '').split()
dev_requirements = docs_requirements + cfg.get('dev_requirements', '').split()
console_scripts = cfg.get('console_scripts', '').split()
long_description = open('README.md', encoding='utf-8').read()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=long_description,
    long_description_content_type='text/markdown',
    license=license_name,
    classifiers=[f'Development Status :: {statuses[int(cfg["status"]) - 1]}',
                 f'Intended Audience :: {cfg["audience"]}',
                 f'Natural Language :: {cfg["language"]}']
                + [f'Programming Language :: Python :: {v}' for v in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    keywords=cfg['keywords'],
    packages=setuptools.find_packages(include=[cfg['lib_name'], f'{cfg["lib_name"]}.*']),
    include_package_data=True,
    package_data={cfg['lib_name']: ['weights/*.pt', 'weights/index.json']},  # the final weights of finished 182-epoch runs (02d_weights)
    install_requires=requirements,
    extras_require={'docs': docs_requirements, 'dev': dev_requirements, 'timm': cfg.get('timm_requirements', '').split()},
    python_requires=f'>={min_python}',
    entry_points={'console_scripts': console_scripts, 'nbdev': [f'{cfg["lib_name"]}={cfg["lib_name"]}._modidx:d']},
    zip_safe=False,
)
