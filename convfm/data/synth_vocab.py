"""Static vocabulary of the synthetic job market (``convfm.data.synth``): skill clusters, cities, company names."""
from __future__ import annotations

from typing import NamedTuple


class Cluster(NamedTuple):
    name: str
    weight: float  # share of jobs and of users' main clusters
    salary: int  # typical mid-level full-time salary
    titles: tuple[str, ...]
    blurb: str
    skills: tuple[str, ...]


CLUSTERS = (
    Cluster("backend", 8, 125_000, ("Backend Engineer", "Software Engineer", "Python Developer", "Java Developer"),
            "You will build and run the services behind our products.",
            ("python", "java", "go", "sql", "postgresql", "docker", "kubernetes", "rest apis", "microservices",
             "redis", "kafka", "spring boot", "django", "aws")),
    Cluster("frontend", 6, 115_000, ("Frontend Engineer", "Web Developer", "UI Engineer"),
            "You will craft fast, accessible web interfaces.",
            ("javascript", "typescript", "react", "vue", "angular", "html", "css", "webpack", "redux",
             "accessibility", "jest", "graphql")),
    Cluster("data_science", 5, 130_000, ("Data Scientist", "Machine Learning Engineer", "Data Analyst"),
            "You will turn data into models and decisions.",
            ("python", "r", "sql", "statistics", "machine learning", "pandas", "scikit-learn", "pytorch",
             "tensorflow", "a/b testing", "tableau", "deep learning")),
    Cluster("data_engineering", 4, 128_000, ("Data Engineer", "Analytics Engineer", "ETL Developer"),
            "You will design the pipelines that feed our analytics.",
            ("spark", "airflow", "sql", "python", "scala", "kafka", "hadoop", "dbt", "snowflake", "etl", "bigquery",
             "data modeling")),
    Cluster("devops", 4, 130_000, ("DevOps Engineer", "Site Reliability Engineer", "Cloud Engineer"),
            "You will keep our infrastructure reliable and automated.",
            ("linux", "aws", "terraform", "kubernetes", "docker", "ansible", "jenkins", "ci/cd", "prometheus", "bash",
             "azure", "gcp")),
    Cluster("mobile", 3, 120_000, ("iOS Developer", "Android Developer", "Mobile Engineer"),
            "You will ship apps used by millions of people.",
            ("swift", "kotlin", "ios", "android", "react native", "flutter", "objective-c", "xcode", "firebase",
             "mobile ui")),
    Cluster("security", 2, 135_000, ("Security Engineer", "Security Analyst", "SOC Analyst"),
            "You will protect our systems and data.",
            ("penetration testing", "siem", "network security", "iam", "incident response", "firewalls", "iso 27001",
             "vulnerability assessment", "cryptography", "splunk")),
    Cluster("design", 3, 105_000, ("Product Designer", "UX Designer", "UI Designer"),
            "You will shape how people experience our products.",
            ("figma", "sketch", "user research", "prototyping", "wireframing", "adobe xd", "illustrator", "photoshop",
             "interaction design", "usability testing", "design systems")),
    Cluster("product", 3, 135_000, ("Product Manager", "Product Owner", "Technical Program Manager"),
            "You will decide what we build next and why.",
            ("roadmapping", "agile", "scrum", "jira", "stakeholder management", "user stories", "product analytics",
             "market research", "okrs", "a/b testing")),
    Cluster("marketing", 5, 85_000, ("Marketing Manager", "Digital Marketing Specialist", "Content Marketer"),
            "You will grow our audience and our brand.",
            ("seo", "sem", "google analytics", "content marketing", "social media", "email marketing", "copywriting",
             "hubspot", "ppc", "brand strategy")),
    Cluster("sales", 7, 80_000, ("Account Executive", "Sales Representative", "Business Development Manager"),
            "You will win and grow customer accounts.",
            ("salesforce", "crm", "lead generation", "cold calling", "negotiation", "account management", "b2b sales",
             "pipeline management", "closing", "prospecting")),
    Cluster("support", 6, 50_000, ("Customer Support Specialist", "Customer Success Manager", "Help Desk Technician"),
            "You will help our customers succeed.",
            ("zendesk", "customer service", "ticketing", "troubleshooting", "live chat", "crm", "conflict resolution",
             "knowledge base", "call center", "active listening")),
    Cluster("nursing", 7, 82_000, ("Registered Nurse", "ICU Nurse", "Nurse Practitioner", "Charge Nurse"),
            "You will care for patients on a busy, supportive unit.",
            ("patient care", "bls", "acls", "medication administration", "ehr", "wound care", "iv therapy", "triage",
             "phlebotomy", "infection control", "cpr")),
    Cluster("accounting", 5, 72_000, ("Staff Accountant", "Accounts Payable Clerk", "Auditor", "Bookkeeper"),
            "You will keep our books accurate and on time.",
            ("gaap", "excel", "quickbooks", "accounts payable", "accounts receivable", "reconciliation",
             "tax preparation", "auditing", "sap", "financial reporting", "payroll")),
    Cluster("finance", 3, 110_000, ("Financial Analyst", "Investment Analyst", "FP&A Analyst"),
            "You will guide decisions with sharp financial analysis.",
            ("financial modeling", "valuation", "excel", "bloomberg", "forecasting", "budgeting", "risk management",
             "vba", "power bi", "due diligence")),
    Cluster("hr", 3, 75_000, ("HR Generalist", "Recruiter", "Talent Acquisition Partner"),
            "You will help us hire and grow great people.",
            ("recruiting", "onboarding", "workday", "employee relations", "payroll", "benefits administration",
             "talent acquisition", "hris", "performance management", "labor law")),
    Cluster("teaching", 4, 58_000, ("Teacher", "Math Teacher", "Instructional Designer", "Tutor"),
            "You will inspire students every day.",
            ("curriculum development", "classroom management", "lesson planning", "special education", "esl",
             "student assessment", "google classroom", "tutoring", "stem", "differentiated instruction")),
    Cluster("logistics", 6, 48_000, ("Warehouse Associate", "Logistics Coordinator", "Supply Chain Analyst"),
            "You will keep goods moving on time.",
            ("forklift", "inventory management", "supply chain", "shipping", "warehouse management", "sap",
             "procurement", "osha", "pallet jack", "order picking")),
    Cluster("trades", 5, 62_000, ("Electrician", "HVAC Technician", "Plumber", "Construction Supervisor"),
            "You will build and maintain the places people live and work.",
            ("electrical wiring", "plumbing", "hvac", "carpentry", "blueprint reading", "welding", "autocad", "osha",
             "project estimation", "power tools")),
    Cluster("hospitality", 6, 38_000, ("Line Cook", "Restaurant Server", "Front Desk Agent", "Bartender"),
            "You will give our guests a great time.",
            ("food safety", "customer service", "pos", "cash handling", "bartending", "food preparation",
             "housekeeping", "reservations", "guest relations", "inventory management")),
    Cluster("legal", 2, 115_000, ("Paralegal", "Corporate Counsel", "Legal Assistant"),
            "You will keep our business on the right side of the law.",
            ("contract law", "legal research", "litigation", "compliance", "westlaw", "legal drafting",
             "due diligence", "corporate law", "e-discovery", "case management")),
)

LOCATIONS = ("New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "Philadelphia", "San Antonio", "San Diego",
             "Dallas", "Austin", "San Jose", "Jacksonville", "Columbus", "Charlotte", "Indianapolis", "San Francisco",
             "Seattle", "Denver", "Washington", "Boston", "Nashville", "Detroit", "Portland", "Las Vegas", "Atlanta",
             "Miami", "Minneapolis", "Raleigh", "Salt Lake City", "Pittsburgh")
REMOTE = "Remote"
# company names are "<prefix> <suffix>" (20 x 20 of them, then numbered)
COMPANY_PREFIXES = ("Blue", "North", "Bright", "Summit", "Iron", "Silver", "Green", "Red", "Clear", "Pioneer",
                    "Atlas", "Harbor", "Cedar", "Maple", "Apex", "Nova", "Union", "Prime", "Vertex", "Golden")
COMPANY_SUFFIXES = ("Labs", "Systems", "Health", "Partners", "Logistics", "Foods", "Financial", "Analytics",
                    "Works", "Group", "Retail", "Energy", "Media", "Software", "Care", "Builders", "Hotels",
                    "Capital", "Academy", "Legal")
